# Shared setup for the plugin's Minitest tests: the real libmc0 (MC0_LIBRARY,
# else the repository's target/release) and a real MCollective configuration
# written to a scratch directory.
#
#   cargo build --release
#   MC0_LIBRARY=$PWD/target/release/libmc0.so ruby -Iruby/lib -e \
#     'Dir["ruby/test/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }'

require 'minitest/autorun'
require 'tmpdir'
require 'fileutils'
require 'timeout'

$LOAD_PATH.unshift(File.expand_path('../lib', __dir__)) unless $LOAD_PATH.include?(File.expand_path('../lib', __dir__))

require 'mc0'
require 'mcollective'

module TestEnv
  ROOT = File.expand_path('../..', __dir__)
  BIN_DIR = ENV['MC0_BIN_DIR'] || File.join(ROOT, 'target', 'release')
  LIBRARY = ENV['MC0_LIBRARY'] || File.join(BIN_DIR, 'libmc0.so')
  DIR = Dir.mktmpdir('mc0-ruby-test')
  Minitest.after_run { FileUtils.rm_rf(DIR) }

  IDENTITY = 'unit-node.example.com'.freeze

  # MCollective::Config is a process-wide singleton: configure it once.
  def self.mcollective
    @mcollective ||= begin
      File.write(File.join(DIR, 'facts.yaml'), "---\nrole: test\n")
      cfg = File.join(DIR, 'client.cfg')
      File.write(cfg, <<~CFG)
        main_collective = mcollective
        collectives = mcollective,other
        libdir = #{File.join(ROOT, 'ruby', 'lib')}
        logger_type = file
        logfile = #{File.join(DIR, 'mcollective.log')}
        loglevel = debug
        identity = #{IDENTITY}
        securityprovider = psk
        plugin.psk = unit
        factsource = yaml
        plugin.yaml = #{File.join(DIR, 'facts.yaml')}
        connector = zeromq
        plugin.zeromq.library = #{LIBRARY}
        plugin.zeromq.broker.host = 127.0.0.1
        plugin.zeromq.broker.port = 1
        plugin.zeromq.broker.public_key = /nonexistent/broker.public
        plugin.zeromq.heartbeat = 2
      CFG
      MCollective::Config.instance.loadconfig(cfg)
      MCollective::Config.instance
    end
  end

  def self.log_text
    File.exist?(File.join(DIR, 'mcollective.log')) ? File.read(File.join(DIR, 'mcollective.log')) : ''
  end

  # Runs `code` in a fresh Ruby (nothing loaded yet) and returns [stdout+stderr, status].
  def self.ruby(code, env = {})
    require 'open3'
    lib = File.join(ROOT, 'ruby', 'lib')
    Timeout.timeout(60) do
      Open3.capture2e(env, RbConfig.ruby, "-I#{lib}", '-e', code)
    end
  end
end

Mc0.load(TestEnv::LIBRARY)
