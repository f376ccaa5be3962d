# The FFI bindings themselves: loading, errors, topics, keys.

require_relative 'test_helper'

class Mc0BindingsTest < Minitest::Test
  def test_version_is_reported
    assert_match(/\A\d+\.\d+\.\d+/, Mc0.version)
    assert_equal File.expand_path(TestEnv::LIBRARY), File.expand_path(Mc0.path)
  end

  def test_topics_come_from_libmc0
    assert_equal 'mcollective rpcutil', Mc0.topic_agent('mcollective', 'rpcutil')
    assert_equal 'mcollective nodes web1.example.com', Mc0.topic_node('mcollective', 'web1.example.com')
    assert_equal 'mcollective reply admin 4242', Mc0.topic_reply('mcollective', 'admin', 4242)
    assert_equal 'c reply me 4294967295', Mc0.topic_reply('c', 'me', 0xffff_ffff)
  end

  def test_subscription_topics_are_libmc0s_one_mapping
    assert_equal 'c rpcutil', Mc0.topic_for_subscription(:broadcast, 'rpcutil', 'c', 'me', 1)
    assert_equal 'c nodes me', Mc0.topic_for_subscription('directed', 'rpcutil', 'c', 'me', 1)
    assert_equal 'c reply me 7', Mc0.topic_for_subscription(:reply, 'rpcutil', 'c', 'me', 7)
    err = assert_raises(Mc0::InvalidArgumentError) { Mc0.topic_for_subscription(:queue, 'a', 'c', 'me', 1) }
    assert_match(/queue/, err.message)
  end

  def test_default_port_comes_from_libmc0
    assert_operator Mc0.default_port, :>, 0
  end

  # The hand-written table must say what include/mc0.h says.
  def test_status_table_matches_the_header
    header = File.read(File.expand_path('../../include/mc0.h', __dir__))
    declared = header.scan(/^\s*MC0_(?:ERR_)?([A-Z_]+) = (\d+),/).to_h { |name, code| [code.to_i, name.downcase.to_sym] }
    refute_empty declared
    assert_equal declared, Mc0::STATUS.transform_values(&:first)
    Mc0::STATUS.each do |code, (name, klass)|
      assert_equal name, Mc0::STATUS[Mc0::CODES[name]].first
      assert(code.zero? || klass <= Mc0::Error, "#{name}: #{klass}")
      refute_equal 'unknown status', Mc0::Native.mc0_status_str(code), name
    end
  end

  def test_config_errors_carry_the_key
    err = assert_raises(Mc0::ConfigError) { Mc0::Config.with('broker.port' => 'lots') { flunk 'accepted it' } }
    assert_equal 'broker.port', err.key
    err = assert_raises(Mc0::KeyFileError) do
      Mc0::Connector.new('broker.host' => '127.0.0.1', 'broker.public_key' => '/nonexistent/b.public',
                         'public_key' => '/nonexistent/c.public', 'private_key' => '/nonexistent/c.private')
    end
    assert_equal 'broker.public_key', err.key
    err = assert_raises(Mc0::TimeoutError) do
      Mc0::Connector.new('broker.host' => '127.0.0.1', 'broker.port' => '1', 'curve' => 'false',
                         'connect_timeout' => '0.2')
    end
    assert_nil err.key
  end

  def test_curve_keypair_is_two_z85_keys
    pub, sec = Mc0.curve_keypair
    assert_match(/\A[0-9a-zA-Z.\-:+=^!\/*?&<>()\[\]{}@%$#]{40}\z/, pub)
    assert_equal 40, sec.size
    refute_equal pub, sec
    refute_equal pub, Mc0.curve_keypair.first
  end

  def test_unknown_config_key_is_an_error_naming_it
    err = assert_raises(Mc0::ConfigError) do
      Mc0::Config.with('broker.host' => 'localhost', 'no.such.setting' => '1') { flunk 'accepted an unknown key' }
    end
    assert_match(/no\.such\.setting/, err.message)
    assert_equal :config, err.status
  end

  def test_bad_number_is_an_error_naming_the_key
    err = assert_raises(Mc0::ConfigError) { Mc0::Config.with('broker.port' => 'lots') { flunk 'accepted it' } }
    assert_match(/broker\.port/, err.message)
  end

  def test_missing_broker_host_fails_connect
    err = assert_raises(Mc0::ConfigError) { Mc0::Connector.new('curve' => 'false') }
    assert_match(/broker\.host/, err.message)
  end

  def test_unknown_broker_host_is_a_resolve_error_naming_it
    err = assert_raises(Mc0::ResolveError) do
      Mc0::Connector.new('broker.host' => 'no-such-host.invalid', 'curve' => 'false', 'connect_timeout' => '30')
    end
    assert_equal :resolve, err.status
    assert_match(/cannot resolve the broker host name "no-such-host\.invalid"/, err.message)
  end

  def test_missing_key_file_fails_connect_naming_the_file
    missing = File.join(TestEnv::DIR, 'absent.public')
    err = assert_raises(Mc0::KeyFileError) do
      Mc0::Connector.new('broker.host' => '127.0.0.1', 'broker.public_key' => missing,
                         'public_key' => missing, 'private_key' => missing)
    end
    assert_includes err.message, missing
  end

  def test_candidates_order
    saved = ENV['MC0_LIBRARY']
    ENV['MC0_LIBRARY'] = '/from/env/libmc0.so'
    assert_equal ['/from/config/libmc0.so', '/from/env/libmc0.so', 'libmc0.so.0', 'libmc0.so', Mc0::REPO_LIBRARY],
                 Mc0.candidates('/from/config/libmc0.so')
    ENV['MC0_LIBRARY'] = ''
    assert_equal ['libmc0.so.0', 'libmc0.so', Mc0::REPO_LIBRARY], Mc0.candidates(nil)
  ensure
    ENV['MC0_LIBRARY'] = saved
  end

  def test_load_error_lists_every_place_tried
    out, status = TestEnv.ruby(<<~RUBY)
      require 'mc0'
      begin
        Mc0.load_first(['/nonexistent/libmc0.so', 'libmc0-not-there.so', 'libzmq.so.5'])
        puts 'loaded?!'
      rescue LoadError => e
        puts e.message
      end
    RUBY
    assert status.success?, out
    assert_includes out, '/nonexistent/libmc0.so: no such file'
    assert_includes out, 'libmc0-not-there.so: '
    assert_match(/libzmq\.so\.5: .*not a usable libmc0 \(no mc0_/, out)
    assert_includes out, 'plugin.zeromq.library'
    refute_includes out, 'loaded?!'
  end
end
