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
      # MCollective 2.12 calls File.exists?, deprecated in Ruby 3.1; not ours to fix.
      deprecated = Warning[:deprecated]
      Warning[:deprecated] = false
      MCollective::Config.instance.loadconfig(cfg)
      Warning[:deprecated] = deprecated
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

# A real mc0d (CURVE, 127.0.0.1) with keys in TestEnv::DIR. TestBroker.shared
# serves most tests; a test that kills its broker makes its own.
class Mc0d
  MC0D = File.join(TestEnv::BIN_DIR, 'mc0d')

  attr_reader :port, :pid

  def self.keyfile(name)
    File.join(TestEnv::DIR, name)
  end

  # Writes NAME.public / NAME.private with libmc0's keypair generator.
  def self.make_keys(name)
    pub, sec = Mc0.curve_keypair
    File.write(keyfile("#{name}.public"), "#{pub}\n")
    File.write(keyfile("#{name}.private"), "#{sec}\n", perm: 0o600)
  end

  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def self.wait_until(seconds, what)
    deadline = monotonic + seconds
    until yield
      raise "timed out after #{seconds}s waiting for #{what}" if monotonic > deadline

      sleep 0.05
    end
  end

  def initialize(name)
    raise "#{MC0D} not found: run 'cargo build --release' first" unless File.executable?(MC0D)

    %w[broker client rogue].each { |n| Mc0d.make_keys(n) unless File.exist?(Mc0d.keyfile("#{n}.private")) }
    @log = Mc0d.keyfile("#{name}.log")
    @port = nil
    Minitest.after_run { stop }
  end

  # Starts mc0d on `port`, or on a free port (retrying if another process
  # takes it first).
  def start(port = nil)
    3.times do
      @port = port || free_port
      before = listen_count
      @pid = Process.spawn(MC0D, '--bind', '127.0.0.1', '--port', @port.to_s,
                           '--curve-private-key', Mc0d.keyfile('broker.private'), '--log-level', 'debug',
                           %i[out err] => [@log, 'a'])
      Mc0d.wait_until(15, 'mc0d to listen') { listen_count > before || exited? }
      return self if @pid

      raise "mc0d did not start on port #{port}:\n#{File.read(@log)}" if port
    end
    raise "mc0d did not start; its log:\n#{File.read(@log)}"
  end

  def stop(signal = 'TERM')
    return unless @pid

    Process.kill(signal, @pid)
    Timeout.timeout(10) { Process.wait(@pid) }
  rescue Timeout::Error
    Process.kill('KILL', @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end

  # libmc0 settings for a client of this broker.
  def settings(extra = {})
    { 'broker.host' => '127.0.0.1', 'broker.port' => @port.to_s,
      'broker.public_key' => Mc0d.keyfile('broker.public'),
      'public_key' => Mc0d.keyfile('client.public'), 'private_key' => Mc0d.keyfile('client.private'),
      'heartbeat' => '2', 'identity' => 'unit' }.merge(extra)
  end

  def log_text
    File.exist?(@log) ? File.read(@log) : ''
  end

  private

  def listen_count
    log_text.scan("listening on tcp://127.0.0.1:#{@port} ").size
  end

  def exited?
    return false unless Process.wait(@pid, Process::WNOHANG)

    @pid = nil
    true
  end

  def free_port
    require 'socket'
    s = TCPServer.new('127.0.0.1', 0)
    s.addr[1]
  ensure
    s&.close
  end
end

module TestBroker
  def self.shared
    @shared ||= Mc0d.new('mc0d').start
  end
end
