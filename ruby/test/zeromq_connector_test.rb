# The plugin's topic and header logic, computed by the real libmc0.

require_relative 'test_helper'

class ZeromqConnectorTest < Minitest::Test
  include MCollective

  def setup
    @config = TestEnv.mcollective
    @connector = MCollective::Connector::Zeromq.new
    @pid = Process.pid
  end

  def request(type: :request, agent: 'rpcutil', collective: 'mcollective', hosts: nil, reply_to: nil)
    msg = Message.new('payload', nil, :agent => agent, :type => :request, :collective => collective)
    msg.discovered_hosts = hosts if hosts
    msg.type = type
    msg.reply_to = reply_to if reply_to
    msg
  end

  def test_plugin_is_registered_under_connector_zeromq
    assert_equal 'MCollective::Connector::Zeromq', PluginManager['connector_plugin'].class.name
  end

  def test_subscription_topics_match_the_legacy_connector
    assert_equal 'mcollective rpcutil', @connector.subscription_topic('rpcutil', :broadcast, 'mcollective')
    assert_equal 'other puppet', @connector.subscription_topic('puppet', :broadcast, 'other')
    assert_equal "mcollective nodes #{TestEnv::IDENTITY}",
                 @connector.subscription_topic('mcollective', :directed, 'mcollective')
    assert_equal "other reply #{TestEnv::IDENTITY} #{@pid}", @connector.subscription_topic('rpcutil', :reply, 'other')
  end

  def test_unknown_subscription_type_is_an_error
    err = assert_raises(RuntimeError) { @connector.subscription_topic('rpcutil', :queue, 'mcollective') }
    assert_match(/queue/, err.message)
  end

  def test_broadcast_request_goes_to_the_agent_topic_with_our_reply_topic
    targets = @connector.publish_targets(request)
    assert_equal [{ :topic => 'mcollective rpcutil',
                    :headers => { 'X-REPLY-TO' => "mcollective reply #{TestEnv::IDENTITY} #{@pid}" } }], targets
  end

  def test_request_in_a_subcollective_replies_in_that_collective
    targets = @connector.publish_targets(request(agent: 'discovery', collective: 'other'))
    assert_equal 'other discovery', targets.first[:topic]
    assert_equal "other reply #{TestEnv::IDENTITY} #{@pid}", targets.first[:headers]['X-REPLY-TO']
  end

  def test_direct_request_is_one_put_per_discovered_node
    targets = @connector.publish_targets(request(type: :direct_request, hosts: %w[web1 db2.example.com]))
    assert_equal ['mcollective nodes web1', 'mcollective nodes db2.example.com'], targets.map { |t| t[:topic] }
    targets.each do |t|
      assert_equal({ 'X-REPLY-TO' => "mcollective reply #{TestEnv::IDENTITY} #{@pid}" }, t[:headers])
    end
  end

  def test_explicit_reply_to_is_honoured
    targets = @connector.publish_targets(request(reply_to: 'mcollective reply collector 7'))
    assert_equal 'mcollective reply collector 7', targets.first[:headers]['X-REPLY-TO']
    targets = @connector.publish_targets(request(type: :direct_request, hosts: %w[a], reply_to: 'elsewhere'))
    assert_equal 'elsewhere', targets.first[:headers]['X-REPLY-TO']
  end

  def test_reply_goes_to_the_requests_x_reply_to
    incoming = Message.new('req', nil, :headers => { 'X-REPLY-TO' => 'mcollective reply admin 4242' })
    incoming.type = :request
    reply = Message.new('answer', nil, :request => incoming)
    assert_equal [{ :topic => 'mcollective reply admin 4242', :headers => {} }], @connector.publish_targets(reply)
  end

  def test_reply_without_x_reply_to_is_an_error_not_a_guess
    incoming = Message.new('req', nil, :headers => {})
    incoming.type = :request
    reply = Message.new('answer', nil, :request => incoming)
    err = assert_raises(RuntimeError) { @connector.publish_targets(reply) }
    assert_match(/X-REPLY-TO/, err.message)
  end

  def test_settings_strip_the_prefix_and_keep_plugin_only_keys_out
    settings = @connector.libmc0_settings
    assert_equal '127.0.0.1', settings['broker.host']
    assert_equal '1', settings['broker.port']
    assert_equal '2', settings['heartbeat']
    assert_equal TestEnv::IDENTITY, settings['identity']
    refute settings.key?('library')
    refute(settings.keys.any? { |k| k.start_with?('zeromq.') })
  end

  def test_legacy_keepalive_setting_is_accepted_not_passed_on
    @config.pluginconf['zeromq.keepalive'] = '5'
    refute @connector.libmc0_settings.key?('keepalive')
  ensure
    @config.pluginconf.delete('zeromq.keepalive')
  end

  def test_mcollective_connection_timeout_bounds_libmc0s_connect
    refute @connector.libmc0_settings.key?('connect_timeout')
    @config.instance_variable_set(:@connection_timeout, 3)
    assert_equal '3', @connector.libmc0_settings['connect_timeout']
    @config.pluginconf['zeromq.connect_timeout'] = '7'
    assert_equal '7', @connector.libmc0_settings['connect_timeout']
  ensure
    @config.instance_variable_set(:@connection_timeout, nil)
    @config.pluginconf.delete('zeromq.connect_timeout')
  end

  def test_not_connected
    err = assert_raises(RuntimeError) { @connector.publish(request) }
    assert_match(/Not connected/, err.message)
    err = assert_raises(MessageNotReceived) { @connector.receive }
    assert_match(/not connected/, err.message)
    assert_operator err.backoff, :>, 0
  end

  def test_missing_private_key_fails_connect_naming_the_setting
    err = assert_raises(RuntimeError) { @connector.connect }
    assert_match(/plugin\.zeromq\.private_key/, err.message)
    assert_nil @connector.connection
  end
end
