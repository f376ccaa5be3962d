# MCollective 2.x connector for the mc0 ZeroMQ broker (mc0d and the legacy
# brokers), over libmc0's C ABI. A drop-in replacement for the legacy
# ffi-rzmq "zeromq" connector: same `connector = zeromq`, same
# plugin.zeromq.* settings, same topics on the wire.
#
# Settings (server.cfg / client.cfg):
#   plugin.zeromq.broker.host        broker address (required), or several
#                                    comma-separated host[:port] (a pool)
#   plugin.zeromq.broker.port        libmc0's default (61616)
#   plugin.zeromq.pool.size          or MCollective's pool form instead of
#   plugin.zeromq.pool.N.host        broker.host: N from 1 to size, each
#   plugin.zeromq.pool.N.port        with its port (61616) and optionally its
#   plugin.zeromq.pool.N.public_key  own key file (else broker.public_key)
#   plugin.zeromq.randomize          true: each node shuffles the pool
#                                    (spreads a fleet); a dead broker's nodes
#                                    fail over to the next one
#   plugin.zeromq.broker.public_key  file with the broker's Z85 public key
#   plugin.zeromq.public_key         this node's public key file
#   plugin.zeromq.private_key        this node's private key file
#   plugin.zeromq.curve              true (false = no encryption; both sides must agree)
#   plugin.zeromq.heartbeat          seconds, 30
#   plugin.zeromq.library            path to libmc0.so (else $MC0_LIBRARY, the
#                                    system library path, the repo's target/release)
# Every other plugin.zeromq.* key is handed to libmc0 with the prefix
# stripped, so libmc0's tuning keys work here too and a typo is an error
# that names the key.
#
# mcollectived connects with libmc0's connect_retry: connect returns once the
# configuration is valid and libmc0 keeps trying (with its backoff, logging
# each failure) until the broker answers; mco makes one bounded attempt.
# Subscriptions are counted by holder in libmc0 (agents share a reply topic).
#
# Topics (computed by libmc0 so every language agrees, see PROTOCOL.md):
#   broadcast requests   "<collective> <agent>"
#   directed requests    "<collective> nodes <identity>"  (one PUT per node)
#   replies              "<collective> reply <identity> <pid>"
# A request carries its reply topic in the X-REPLY-TO header; a reply goes
# to the request's X-REPLY-TO.

require_relative '../../mc0'

module MCollective
  module Connector
    class Zeromq < Base
      REPLY_TO = 'X-REPLY-TO'.freeze

      # How long one wait inside libmc0 lasts. receive loops over slices so
      # that Timeout (mco) and Thread#kill (mcollectived) take effect within
      # one slice: they cannot interrupt a native call, only the Ruby code
      # between two.
      RECEIVE_SLICE_MS = 250

      # Pause before raising MessageNotReceived, and the backoff suggested
      # to the caller, so a dead link does not turn into a busy loop.
      ERROR_PAUSE = 0.5
      MAX_BACKOFF = 10.0

      # Settings that belong to this plugin, not to libmc0.
      PLUGIN_ONLY = %w[library].freeze

      # Settings some legacy versions of this plugin read and libmc0 has no
      # use for: accepted with a warning, so old configs keep working.
      LEGACY_IGNORED = { 'keepalive' => 'libmc0 keeps the link alive with plugin.zeromq.heartbeat' }.freeze

      LOG_LEVELS = { 'debug' => :debug, 'info' => :info, 'warn' => :warn,
                     'error' => :error, 'fatal' => :error }.freeze

      attr_reader :connection

      def initialize
        @config = Config.instance
        @connection = nil
        @connect_lock = Mutex.new
        @backoff = ERROR_PAUSE
      end

      # Loads libmc0 (plugin.zeromq.library first). Idempotent. A RuntimeError
      # rather than LoadError, so that mcollectived logs it and mco prints it.
      def load_library
        Mc0.load(@config.pluginconf['zeromq.library'])
      rescue LoadError => e
        raise(e.message)
      end

      def connect
        @connect_lock.synchronize do
          if @connection
            Log.debug('Already connected to the mc0 broker, not reconnecting')
            return
          end

          path = load_library
          level = LOG_LEVELS.fetch(@config.loglevel.to_s.downcase, :info)
          Mc0.set_logger(level) { |lvl, text| libmc0_log(lvl, text) }
          Log.info("mc0 connector: libmc0 #{Mc0.version} from #{path}")

          settings = libmc0_settings
          @connection = open_connection(settings)
          if %w[true yes 1].include?(settings['connect_retry'].to_s.downcase)
            Log.info("Connecting to the mc0 broker at #{broker_description} (libmc0 retries until it answers)")
          else
            Log.info("Connected to the mc0 broker at #{broker_description}")
          end
        end
      end

      def disconnect
        conn = nil
        @connect_lock.synchronize do
          conn = @connection
          @connection = nil
        end
        return unless conn

        Log.debug("Disconnecting from the mc0 broker at #{broker_description}")
        conn.close
      end

      # libmc0's counters and last error for this daemon's connection (a
      # Hash, see Mc0::Connector#stats), plus the broker it is configured
      # for; nil before connect. The `mc0` agent's `counters` action reports it.
      def stats
        conn = @connection
        return nil unless conn

        conn.stats.merge('broker' => broker_description)
      end

      # libmc0 counts holders: a topic several agents share stays subscribed
      # until the last of them unsubscribes.
      def subscribe(agent, type, collective)
        topic = subscription_topic(agent, type, collective)
        Log.debug("Subscribing to '#{topic}'")
        live_connection.subscribe(topic)
      rescue Mc0::TimeoutError => e
        # libmc0 keeps the subscription and makes it once the broker answers.
        Log.warn("#{e.message}; the subscription is made when the broker is back")
      end

      def unsubscribe(agent, type, collective)
        topic = subscription_topic(agent, type, collective)
        Log.debug("Unsubscribing from '#{topic}'")
        live_connection.unsubscribe(topic)
      rescue Mc0::TimeoutError => e
        # Already forgotten by libmc0; a restarted broker never hears of it.
        Log.warn(e.message)
      end

      # A message's time-to-live on the wire: MCollective's TTL plus an
      # allowance for clock slack between hosts, as MCollective's ActiveMQ
      # and RabbitMQ connectors add (10 s). libmc0 never sends it once that
      # has passed (a stale request must not run on a fleet minutes later),
      # and mc0d never delivers it from a queue past it.
      TTL_ALLOWANCE = 10

      def publish(msg)
        conn = live_connection
        ttl_ms = msg.ttl ? (Integer(msg.ttl) + TTL_ALLOWANCE) * 1000 : nil
        publish_targets(msg).each do |target|
          Log.debug("Publishing #{msg.type} to '#{target[:topic]}' with headers #{target[:headers].inspect}")
          conn.publish(target[:topic], msg.payload, target[:headers], ttl_ms)
        end
      end

      # Blocks until a message arrives. Raises MessageNotReceived (after a
      # short pause, with a backoff suggestion) when the connection fails.
      def receive
        Log.debug('Waiting for a message from the mc0 broker')
        loop do
          conn = @connection
          not_received('not connected') unless conn
          raw = begin
            conn.receive(RECEIVE_SLICE_MS)
          rescue Mc0::Error => e
            not_received(e.message)
          end
          next unless raw

          @backoff = ERROR_PAUSE
          # raw.sender / raw.sender_key: who mc0d authenticated as the
          # publisher (its allowlist name, or else its CURVE key: one of the
          # two), nil if it did not say; kept with the message as its
          # `message` object.
          Log.debug("Received a message on '#{raw.topic}' from #{raw.sender || raw.sender_key || 'an unnamed sender'} " \
                    "with headers #{raw.headers.keys.inspect}")
          return Message.new(raw.body, raw, :base64 => false, :headers => raw.headers)
        end
      end

      # The topic subscribe/unsubscribe use for (agent, type, collective).
      def subscription_topic(agent, type, collective)
        load_library
        Mc0.topic_for_subscription(type, agent, collective, @config.identity, Process.pid)
      rescue Mc0::InvalidArgumentError => e
        raise("Unknown subscription type '#{type}' for the zeromq connector (#{e.detail})")
      end

      # Where this process receives replies in `collective`.
      def reply_topic(collective)
        load_library
        Mc0.topic_reply(collective, @config.identity, Process.pid)
      end

      # [{:topic, :headers}] for one MCollective message: one entry, or one
      # per discovered node for a direct request.
      def publish_targets(msg)
        load_library
        case msg.type
        when :reply
          reply_to = msg.request && msg.request.headers && msg.request.headers[REPLY_TO]
          if reply_to.nil? || reply_to.to_s.empty?
            raise("Cannot send the reply to request #{msg.requestid}: it has no #{REPLY_TO} header")
          end

          [{ :topic => reply_to.to_s, :headers => {} }]
        when :request
          [{ :topic => Mc0.topic_agent(msg.collective, msg.agent), :headers => request_headers(msg) }]
        when :direct_request
          headers = request_headers(msg)
          Array(msg.discovered_hosts).map do |node|
            { :topic => Mc0.topic_node(msg.collective, node), :headers => headers }
          end
        else
          raise("Cannot publish a message of type #{msg.type} with the zeromq connector")
        end
      end

      # plugin.zeromq.* without the prefix, as libmc0 config keys.
      def libmc0_settings
        settings = {}
        @config.pluginconf.each do |key, value|
          next unless key.start_with?('zeromq.')

          name = key.sub('zeromq.', '')
          if LEGACY_IGNORED.key?(name)
            Log.warn("plugin.#{key} is ignored: #{LEGACY_IGNORED[name]}")
          elsif !PLUGIN_ONLY.include?(name)
            settings[name] = value.to_s.strip
          end
        end
        settings['identity'] ||= @config.identity
        # MCollective's connection_timeout wraps connect in Timeout, which
        # cannot cut a native call short; let libmc0 give up in time instead.
        if !settings.key?('connect_timeout') && @config.connection_timeout
          settings['connect_timeout'] = @config.connection_timeout.to_s
        end
        # A node keeps trying until the broker answers (as the Stomp
        # connectors do), also while its host name does not resolve (DNS may
        # be down or late at boot); libmc0 does it in the background.
        settings['connect_retry'] ||= 'true' if @config.mode == :server
        settings
      end

      private

      def request_headers(msg)
        reply_to = msg.reply_to || reply_topic(msg.collective)
        { REPLY_TO => reply_to }
      end

      def live_connection
        @connection || raise('Not connected to the mc0 broker (connect first)')
      end

      # With connect_retry (mcollectived) libmc0 connects in the background;
      # otherwise (mco) this is one bounded attempt. Configuration and key
      # file errors fail at once either way: they never heal by retrying.
      def open_connection(settings)
        Mc0::Connector.new(settings)
      rescue Mc0::ConfigError, Mc0::KeyFileError, Mc0::InvalidArgumentError => e
        raise("zeromq connector configuration: #{plugin_setting_error(e)}")
      rescue Mc0::Error => e
        message = "Could not connect to the mc0 broker at #{broker_description}: #{e.detail}"
        if e.status == :timeout && !e.detail.include?('public_key')
          message += ' (is mc0d running there, and is plugin.zeromq.broker.public_key its public key?)'
        end
        raise(message)
      end

      # libmc0's error names the setting at fault (Mc0::Error#key); say it
      # the way server.cfg/client.cfg spell it.
      def plugin_setting_error(error)
        return error.detail unless error.key

        "plugin.zeromq.#{error.key}: #{error.detail.delete_prefix("#{error.key}: ")}"
      end

      def broker_description
        conf = @config.pluginconf
        if (size = conf['zeromq.pool.size'])
          return "the pool of #{size} brokers (plugin.zeromq.pool.*)"
        end

        host = conf['zeromq.broker.host'] || '(plugin.zeromq.broker.host unset)'
        return host if host.include?(',')

        "#{host}:#{conf['zeromq.broker.port'] || Mc0.default_port}"
      end

      def not_received(reason)
        backoff = @backoff
        @backoff = [@backoff * 2, MAX_BACKOFF].min
        sleep(ERROR_PAUSE)
        raise(MessageNotReceived.new(backoff), "No message received from the mc0 broker: #{reason}")
      end

      def libmc0_log(level, text)
        case level
        when :error then Log.error("libmc0: #{text}")
        when :warn then Log.warn("libmc0: #{text}")
        when :info then Log.info("libmc0: #{text}")
        else Log.debug("libmc0: #{text}")
        end
      end
    end
  end
end
