# The bindings and the plugin against a real mc0d (CURVE on 127.0.0.1).

require 'socket'
require_relative 'test_helper'

class BrokerRoundtripTest < Minitest::Test
  def setup
    @broker = TestBroker.shared
    @open = []
  end

  def teardown
    @open.each(&:close)
  end

  def connect(extra = {})
    Mc0::Connector.new(@broker.settings(extra)).tap { |c| @open << c }
  end

  # Receives until a message arrives, bounded.
  def receive_one(conn, seconds = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      msg = conn.receive(200)
      return msg if msg
    end
    flunk "no message within #{seconds}s"
  end

  def test_publish_and_receive_keep_topic_headers_and_body_exact
    a = connect('identity' => 'unit-a')
    b = connect('identity' => 'unit-b')
    a.subscribe('mcollective rpcutil')
    body = "\x00binary\xff\npayload".b * 1000
    b.publish('mcollective rpcutil', body, 'X-REPLY-TO' => 'mcollective reply unit-b 1', 'X-BIN' => "\x00\xfe".b)
    msg = receive_one(a)
    assert_equal 'mcollective rpcutil', msg.topic
    assert_equal body, msg.body
    assert_equal Encoding::BINARY, msg.body.encoding
    assert_equal 'mcollective reply unit-b 1', msg.headers['X-REPLY-TO']
    assert_equal "\x00\xfe".b, msg.headers['X-BIN']
    # Stamped by mc0d: the publisher's key (no allowlist, so no name), not
    # among the X- headers.
    assert_equal File.read(Mc0d.keyfile('client.public')).strip, msg.sender_key
    assert_nil msg.sender
    assert_equal %w[X-BIN X-REPLY-TO], msg.headers.keys.sort
  end

  def test_stats_count_sent_acknowledged_and_received_and_survive_close
    a = connect('identity' => 'stats-a')
    b = connect('identity' => 'stats-b')
    a.subscribe('mcollective stats')
    3.times { b.publish('mcollective stats', 'x') }
    b.flush(10_000)
    3.times { receive_one(a) }
    sent = b.stats
    assert_equal [1, 3, 3, 0, nil], sent.values_at('handshakes', 'sent', 'acknowledged', 'publishes_dropped', 'last_error')
    assert_equal 3, a.stats['received']
    b.close
    assert_equal 3, b.stats['acknowledged'], 'stats stay readable after close'
  end

  def test_stats_name_the_broker_of_the_pool_in_use
    # The first of the list refuses connections: the connector fails over.
    dead = TCPServer.open('127.0.0.1', 0).then { |s| s.addr[1].tap { s.close } }
    a = connect('broker.host' => "127.0.0.1:#{dead},127.0.0.1:#{@broker.settings['broker.port']}",
                'randomize' => 'false')
    stats = a.stats
    assert_equal "127.0.0.1:#{@broker.settings['broker.port']}", stats['broker']
    assert_equal [1, 1, 1], stats.values_at('failovers', 'broker_index', 'handshakes')
  end

  def test_queue_keeps_messages_with_a_ttl_and_explicit_acks_hold_until_acked
    topic = "mcollective reply unit-q #{Process.pid}"
    first = connect('identity' => 'unit-q', 'explicit_ack' => 'true')
    first.subscribe_queue(topic, 'async')
    first.unsubscribe(topic) # the queue now exists and keeps what comes
    publisher = connect('identity' => 'unit-p')
    publisher.publish(topic, 'kept', {}, 60_000)
    publisher.flush(10_000)
    first.subscribe_queue(topic, 'async')
    msg = receive_one(first)
    assert_equal 'kept', msg.body
    assert_equal 'async', msg.headers['QUEUE']
    assert_operator Integer(msg.headers['EXPIRES-IN']), :<=, 60_000
    first.close # not acknowledged: delivered again
    second = connect('identity' => 'unit-q', 'explicit_ack' => 'true')
    second.subscribe_queue(topic, 'async')
    again = receive_one(second)
    assert_equal ['kept', '1'], [again.body, again.headers['REDELIVERED']]
    second.ack(again)
    assert_nil second.ack(Mc0::Message.new(topic, {}, '', nil, nil)), 'a message not from a queue is ignored'
  end

  def test_receive_times_out_with_nil
    a = connect
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_nil a.receive(300)
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 10
  end

  def test_close_wakes_a_receiver_in_another_thread
    a = connect
    waiting = Queue.new
    receiver = Thread.new do
      waiting << :ready
      a.receive(60_000)
    rescue Mc0::ClosedError => e
      e
    end
    waiting.pop
    sleep 0.2 until receiver.status == 'sleep' || !receiver.alive? # in the native wait (GVL released)
    a.close
    assert receiver.join(10), 'close did not wake the receiver'
    assert_instance_of Mc0::ClosedError, receiver.value
    assert_raises(Mc0::ClosedError) { a.publish('t', 'x') }
    a.close # idempotent
  end

  def test_wrong_broker_key_times_out_with_a_clear_error
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    err = assert_raises(Mc0::TimeoutError) do
      connect('broker.public_key' => Mc0d.keyfile('rogue.public'), 'connect_timeout' => '1')
    end
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 15
    assert_equal :timeout, err.status
    refute_empty err.detail
  end

  def test_libmc0_log_lines_reach_the_ruby_handler
    lines = Queue.new
    Mc0.set_logger(:debug) { |level, text| lines << [level, text] }
    connect
    level, text = Timeout.timeout(10) { lines.pop }
    assert_includes Mc0::LEVELS.values, level
    refute_empty text
  ensure
    Mc0.set_logger
  end
end

class PluginRoundtripTest < Minitest::Test
  include MCollective

  def setup
    @broker = TestBroker.shared
    @config = TestEnv.mcollective
    @saved = @config.pluginconf.dup
    @config.pluginconf.merge!(
      'zeromq.broker.port' => @broker.port.to_s,
      'zeromq.broker.public_key' => Mc0d.keyfile('broker.public'),
      'zeromq.public_key' => Mc0d.keyfile('client.public'),
      'zeromq.private_key' => Mc0d.keyfile('client.private'),
      'zeromq.connect_timeout' => '2'
    )
    @connector = MCollective::Connector::Zeromq.new
  end

  def teardown
    @connector.disconnect
    @config.pluginconf.replace(@saved)
  end

  def test_request_and_reply_through_the_broker
    @connector.connect
    @connector.subscribe('rpcutil', :broadcast, 'mcollective')
    @connector.subscribe('rpcutil', :reply, 'mcollective')

    request = Message.new('ping?', nil, :agent => 'rpcutil', :type => :request, :collective => 'mcollective')
    @connector.publish(request)
    received = Timeout.timeout(15) { @connector.receive }
    assert_equal 'ping?', received.payload
    assert_equal "mcollective reply #{TestEnv::IDENTITY} #{Process.pid}", received.headers['X-REPLY-TO']

    received.type = :request
    reply = Message.new('pong!', nil, :request => received)
    @connector.publish(reply)
    answer = Timeout.timeout(15) { @connector.receive }
    assert_equal 'pong!', answer.payload
    assert_equal "mcollective reply #{TestEnv::IDENTITY} #{Process.pid}", answer.message.topic
  end

  def test_shared_reply_subscription_survives_one_unsubscribe
    @connector.connect
    @connector.subscribe('rpcutil', :reply, 'mcollective')
    @connector.subscribe('discovery', :reply, 'mcollective')
    @connector.unsubscribe('rpcutil', :reply, 'mcollective')
    @connector.connection.publish(@connector.reply_topic('mcollective'), 'still here')
    assert_equal 'still here', Timeout.timeout(15) { @connector.receive }.payload
  end

  def test_subscribing_while_the_broker_is_down_takes_effect_when_it_is_back
    own = Mc0d.new('mc0d-restart').start
    @config.pluginconf['zeromq.broker.port'] = own.port.to_s
    @config.pluginconf['zeromq.connect_timeout'] = '1'
    @connector.connect
    own.stop('KILL')
    @connector.subscribe('puppet', :broadcast, 'mcollective') # times out: warned, kept by libmc0
    own.start(own.port)
    sender = Mc0::Connector.new(own.settings('identity' => 'sender', 'connect_timeout' => '5'))
    begin
      answer = nil
      Mc0d.wait_until(30, 'the subscription to be made after the broker restart') do
        sender.publish('mcollective puppet', 'after restart')
        answer = Timeout.timeout(1) { @connector.receive }
      rescue Timeout::Error
        false
      end
      assert_equal 'after restart', answer.payload
      assert_match(/subscription is made when the broker is back/, TestEnv.log_text)
    ensure
      sender.close
      @connector.disconnect
      own.stop
    end
  end

  def test_timeout_interrupts_receive_within_a_slice
    @connector.connect
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_raises(Timeout::Error) { Timeout.timeout(0.5) { @connector.receive } }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 5
  end

  def test_libmc0_logs_into_mcollectives_log
    @connector.connect
    Mc0d.wait_until(10, 'a libmc0 line in the MCollective log') { TestEnv.log_text.include?('libmc0: ') }
  end

  def test_client_with_wrong_broker_key_fails_clearly
    @config.pluginconf['zeromq.broker.public_key'] = Mc0d.keyfile('rogue.public')
    err = assert_raises(RuntimeError) { @connector.connect }
    assert_match(/Could not connect to the mc0 broker at 127\.0\.0\.1:#{@broker.port}/, err.message)
    assert_match(/broker\.public_key/, err.message)
    assert_nil @connector.connection
  end

  def test_an_unknown_broker_host_fails_mco_at_once_and_mcollectived_retries
    @config.pluginconf['zeromq.broker.host'] = 'no-such-host.invalid'
    @config.pluginconf['zeromq.connect_timeout'] = '60'
    started = Mc0d.monotonic
    err = assert_raises(RuntimeError) { @connector.connect }
    assert_operator Mc0d.monotonic - started, :<, 20, 'not at once (connect_timeout is 60 s)'
    assert_match(/Could not connect to the mc0 broker at no-such-host\.invalid:/, err.message)
    assert_match(/cannot resolve the broker host name "no-such-host\.invalid"/, err.message)

    # A temporary DNS failure heals: a server keeps trying. Its connect
    # returns at once (libmc0's connect_retry) and libmc0 retries in the
    # background.
    @config.mode = :server
    started = Mc0d.monotonic
    @connector.connect
    assert_operator Mc0d.monotonic - started, :<, 20, 'a server does not wait for the broker'
    refute_nil @connector.connection
    Mc0d.wait_until(30, 'the server to retry') do
      TestEnv.log_text.match?(/cannot resolve the broker host name "no-such-host\.invalid".*retrying in/)
    end
    assert_match(/Connecting to the mc0 broker at no-such-host\.invalid:.*retries until it answers/, TestEnv.log_text)
  ensure
    @config.mode = :client
  end

  def test_missing_key_file_names_the_file
    missing = File.join(TestEnv::DIR, 'nope.private')
    @config.pluginconf['zeromq.private_key'] = missing
    err = assert_raises(RuntimeError) { @connector.connect }
    assert_includes err.message, missing
  end

  def test_unknown_setting_names_the_plugin_key
    @config.pluginconf['zeromq.brokr.host'] = 'typo'
    err = assert_raises(RuntimeError) { @connector.connect }
    assert_includes err.message, 'plugin.zeromq.brokr.host'
  end
end
