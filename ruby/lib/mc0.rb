# Ruby bindings for libmc0's C ABI (include/mc0.h), via the `ffi` gem.
#
# The library is loaded lazily by Mc0.load so that the MCollective plugin can
# pass the path from its configuration (plugin.zeromq.library) first.
#
# Threading rules this file relies on:
# - Every function that can wait (for the broker, for a message, for the
#   engine thread) is attached with `blocking: true`, so the GVL is released
#   while it runs. This is also what keeps the log callback safe: libmc0's
#   engine thread may call it at any time, and ruby-ffi runs such callbacks on
#   a Ruby dispatcher thread that needs the GVL. A non-blocking call that waits
#   on the engine thread while it logs would deadlock.
# - mc0_last_error() is thread-local, so it is read right after the failing
#   call on the same thread (Ruby threads are native threads).
# - Native memory is freed in `ensure` blocks; a connector handle is freed
#   when its Connector is garbage (FFI::AutoPointer), so no Ruby thread can
#   still be starting a call on it. Connectors still open at exit are closed
#   by an at_exit hook, while the callback dispatcher thread is still alive
#   (finalizers run after Ruby has killed it, when a log line from the
#   engine could no longer be delivered).

require 'ffi'
require 'json'

module Mc0
  # Every libmc0 failure. `status` is the mc0_status name (e.g. :timeout).
  class Error < StandardError
    # mc0_status name (e.g. :timeout), mc0_last_error()'s text alone, and
    # the configuration key it is about (mc0_last_error_key(), e.g.
    # "broker.port"; nil if none).
    attr_reader :status, :detail, :key

    def initialize(message, status = nil, detail = nil, key = nil)
      super(message)
      @status = status
      @detail = detail || message
      @key = key
    end
  end

  class InvalidArgumentError < Error; end
  class ConfigError < Error; end
  class KeyFileError < Error; end
  class TimeoutError < Error; end
  class ClosedError < Error; end
  class BrokerError < Error; end
  class QueueFullError < Error; end
  class ZmqError < Error; end
  class PanicError < Error; end
  # The broker's host name does not resolve. May heal (DNS), so mcollectived
  # retries it like an unreachable broker; mco reports it at once.
  class ResolveError < Error; end
  # A lookup found nothing (MC0_ERR_NOT_FOUND).
  class NotFoundError < Error; end

  # mc0_status codes as include/mc0.h defines them (MC0_OK, MC0_ERR_<NAME>);
  # ruby/test/mc0_test.rb checks this table against the header.
  STATUS = {
    0 => [:ok, nil],
    1 => [:invalid_argument, InvalidArgumentError],
    2 => [:config, ConfigError],
    3 => [:key, KeyFileError],
    4 => [:timeout, TimeoutError],
    5 => [:closed, ClosedError],
    6 => [:broker, BrokerError],
    7 => [:queue_full, QueueFullError],
    8 => [:zmq, ZmqError],
    9 => [:panic, PanicError],
    10 => [:resolve, ResolveError],
    11 => [:not_found, NotFoundError]
  }.freeze
  # mc0_status name => code, e.g. CODES[:timeout].
  CODES = STATUS.to_h { |code, (name, _)| [name, code] }.freeze

  # Log levels of the callback (src/log.rs): 1=error .. 4=debug.
  LEVELS = { 1 => :error, 2 => :warn, 3 => :info, 4 => :debug }.freeze

  # Where the repository's `cargo build --release` puts the library, relative
  # to this file (ruby/lib/mc0.rb).
  REPO_LIBRARY = File.expand_path('../../target/release/libmc0.so', __dir__)
  SYSTEM_LIBRARIES = %w[libmc0.so.0 libmc0.so].freeze

  module Native
    extend FFI::Library

    # (void *user_data, int32_t level, const char *message)
    callback :log_fn, %i[pointer int32 string], :void

    # [name, args, return, may wait]
    FUNCTIONS = [
      [:mc0_version, [], :string, false],
      [:mc0_last_error, [], :string, false],
      [:mc0_last_error_key, [], :string, false],
      [:mc0_status_str, [:uint32], :string, false],
      [:mc0_default_port, [], :uint16, false],
      [:mc0_config_new, [], :pointer, false],
      [:mc0_config_set, %i[pointer string string], :int, false],
      [:mc0_config_free, [:pointer], :void, false],
      [:mc0_connector_new, %i[pointer pointer], :int, true],
      [:mc0_connector_subscribe, %i[pointer string], :int, true],
      [:mc0_connector_unsubscribe, %i[pointer string], :int, true],
      [:mc0_connector_publish, %i[pointer string pointer pointer pointer size_t pointer size_t], :int, true],
      [:mc0_connector_publish_ttl, %i[pointer string pointer pointer pointer size_t pointer size_t uint64], :int, true],
      [:mc0_connector_subscribe_queue, %i[pointer string string], :int, true],
      [:mc0_connector_ack, %i[pointer uint64], :int, true],
      [:mc0_connector_flush, %i[pointer int32], :int, true],
      [:mc0_connector_stats_json, [:pointer], :pointer, false],
      [:mc0_connector_receive, %i[pointer int32 pointer], :int, true],
      [:mc0_connector_close, [:pointer], :int, true],
      [:mc0_connector_free, [:pointer], :void, true],
      [:mc0_message_topic, [:pointer], :pointer, false],
      [:mc0_message_sender, [:pointer], :pointer, false],
      [:mc0_message_sender_key, [:pointer], :pointer, false],
      [:mc0_message_header_count, [:pointer], :size_t, false],
      [:mc0_message_header_name, %i[pointer size_t], :pointer, false],
      [:mc0_message_header_value, %i[pointer size_t pointer], :pointer, false],
      [:mc0_message_header, %i[pointer string pointer], :pointer, false],
      [:mc0_message_headers_json, [:pointer], :pointer, false],
      [:mc0_message_body, %i[pointer pointer], :pointer, false],
      [:mc0_message_free, [:pointer], :void, false],
      [:mc0_topic_agent, %i[string string], :pointer, false],
      [:mc0_topic_node, %i[string string], :pointer, false],
      [:mc0_topic_reply, %i[string string uint32], :pointer, false],
      [:mc0_topic_for_subscription, %i[string string string string uint32], :pointer, false],
      [:mc0_string_free, [:pointer], :void, false],
      [:mc0_curve_keypair, %i[pointer pointer], :int, false],
      # May wait for a log call in flight on the engine thread (see the top).
      [:mc0_set_log_callback, %i[log_fn pointer int32], :void, true]
    ].freeze

    # Binds the functions from `path`; raises LoadError naming what is missing.
    def self.bind(path)
      ffi_lib(path)
      FUNCTIONS.each do |name, args, ret, blocking|
        attach_function(name, args, ret, blocking: blocking)
      rescue FFI::NotFoundError => e
        raise LoadError, "#{path} is not a usable libmc0 (no #{name}: #{e.message})"
      end
    end
  end

  @lock = Mutex.new
  @path = nil
  @log_handler = nil
  @log_callback = nil

  class << self
    # The path of the loaded library, or nil.
    attr_reader :path

    # Loads libmc0 once per process, trying in order: `explicit` (e.g.
    # plugin.zeromq.library), $MC0_LIBRARY, the system library path, the
    # repository's target/release. Returns the path that loaded. Raises
    # LoadError listing every place tried and why each failed.
    def load(explicit = nil)
      load_first(candidates(explicit))
    end

    # Loads the first of `paths` that is a usable libmc0 (see #load).
    def load_first(paths)
      @lock.synchronize do
        return @path if @path

        failures = []
        paths.each do |candidate|
          if candidate.include?('/') && !File.exist?(candidate)
            failures << "#{candidate}: no such file"
            next
          end
          begin
            Native.bind(candidate)
            @path = candidate
            return @path
          rescue LoadError => e
            failures << "#{candidate}: #{e.message}"
          end
        end
        raise LoadError, "cannot load libmc0; tried:\n  #{failures.join("\n  ")}\n" \
                         'Set plugin.zeromq.library or MC0_LIBRARY to the path of libmc0.so.'
      end
    end

    # Where #load looks, in order.
    def candidates(explicit = nil)
      list = []
      list << explicit.to_s unless explicit.to_s.empty?
      list << ENV['MC0_LIBRARY'] unless ENV['MC0_LIBRARY'].to_s.empty?
      list.concat(SYSTEM_LIBRARIES)
      list << REPO_LIBRARY
      list.uniq
    end

    def loaded?
      !@path.nil?
    end

    def version
      Native.mc0_version
    end

    # Raises the exception for `status`, carrying mc0_last_error(). `what`
    # says which call failed. Must run on the thread that made the call.
    def check(status, what)
      return if status.zero?

      name, klass = STATUS.fetch(status, [:unknown, Error])
      detail = Native.mc0_last_error.to_s
      key = Native.mc0_last_error_key
      detail = Native.mc0_status_str(status) if detail.empty?
      raise (klass || Error).new("#{what}: #{detail}", name, detail, key)
    end

    # The port libmc0 uses when broker.port is not set.
    def default_port
      Native.mc0_default_port
    end

    # The topic for MCollective's subscribe(agent, type, collective) as
    # identity with process id pid: libmc0's one mapping. Raises
    # InvalidArgumentError for a type it has no topic for.
    def topic_for_subscription(type, agent, collective, identity, pid)
      take_string(Native.mc0_topic_for_subscription(type.to_s, agent.to_s, collective.to_s, identity.to_s,
                                                    Integer(pid)), 'mc0_topic_for_subscription')
    end

    # Calls mc0_topic_* and frees the returned string.
    def topic_agent(collective, agent)
      take_string(Native.mc0_topic_agent(collective.to_s, agent.to_s), 'mc0_topic_agent')
    end

    def topic_node(collective, identity)
      take_string(Native.mc0_topic_node(collective.to_s, identity.to_s), 'mc0_topic_node')
    end

    def topic_reply(collective, identity, pid)
      take_string(Native.mc0_topic_reply(collective.to_s, identity.to_s, Integer(pid)), 'mc0_topic_reply')
    end

    # Returns [public_z85, secret_z85].
    def curve_keypair
      pub = FFI::MemoryPointer.new(:char, 41)
      sec = FFI::MemoryPointer.new(:char, 41)
      check(Native.mc0_curve_keypair(pub, sec), 'mc0_curve_keypair')
      [pub.read_string, sec.read_string]
    ensure
      sec&.clear
      pub&.free
      sec&.free
    end

    # Routes libmc0's log lines to the block (level Symbol, message String).
    # The block runs on ruby-ffi's callback dispatcher thread; exceptions are
    # swallowed because there is no caller to hand them to. `max_level` is
    # :error, :warn, :info or :debug. With no block, logging is switched off.
    def set_logger(max_level = :info, &block)
      @lock.synchronize do
        if block
          @log_handler = block
          @log_callback ||= method(:dispatch_log).to_proc
          Native.mc0_set_log_callback(@log_callback, nil, LEVELS.key(max_level) || 3)
        else
          Native.mc0_set_log_callback(nil, nil, 0)
          @log_handler = nil
        end
      end
    end

    # A string libmc0 allocated, as UTF-8 Ruby text; frees it.
    def take_string(ptr, what)
      raise InvalidArgumentError.new("#{what}: #{Native.mc0_last_error}", :invalid_argument) if ptr.null?

      ptr.read_string.force_encoding(Encoding::UTF_8)
    ensure
      Native.mc0_string_free(ptr) if ptr && !ptr.null?
    end

    private

    def dispatch_log(_user_data, level, message)
      handler = @log_handler
      handler&.call(LEVELS.fetch(level, :debug), message.to_s)
    rescue Exception # rubocop:disable Lint/RescueException
      nil
    end
  end

  # A message as received: topic (String), headers ({name => binary String},
  # the publisher's X- headers), body (binary String), sender and sender_key
  # (String or nil): the publisher's identity as mc0d's allowlist names its
  # key (SENDER, with an allowlist), or else its CURVE public key (Z85,
  # SENDER-KEY, in open mode); mc0d sets one of them itself, a broker that
  # sets none leaves both nil. Plain Ruby values: nothing native is kept.
  Message = Struct.new(:topic, :headers, :body, :sender, :sender_key)

  # mc0_config as a short-lived native object.
  module Config
    # Builds an mc0_config from `settings` ({key => value}), yields it, frees
    # it. ConfigError names the offending key.
    def self.with(settings)
      cfg = Native.mc0_config_new
      raise Error.new('mc0_config_new: out of memory', :invalid_argument) if cfg.null?

      settings.each do |key, value|
        Mc0.check(Native.mc0_config_set(cfg, key.to_s, value.to_s), "setting #{key}")
      end
      yield cfg
    ensure
      Native.mc0_config_free(cfg) if cfg && !cfg.null?
    end
  end

  # A connection to the broker. Thread-safe: any number of threads may
  # publish while others receive; #close wakes them all.
  #
  # #close only closes the native handle (later calls fail with ClosedError);
  # it is freed with this object (FFI::AutoPointer), when no Ruby thread can
  # be inside or about to enter a call on it. mc0_connector_free would also
  # wait for calls in progress, but not for one a thread is about to start.
  class Connector
    @open = {}
    @open_lock = Mutex.new

    class << self
      def track(conn)
        @open_lock.synchronize { @open[conn.object_id] = conn }
      end

      def untrack(conn)
        @open_lock.synchronize { @open.delete(conn.object_id) }
      end

      def close_all
        @open_lock.synchronize { @open.values }.each do |conn|
          conn.close
        rescue StandardError
          nil
        end
      end
    end

    # Connects (CONNECT handshake, bounded by libmc0's connect_timeout).
    # `settings` are libmc0 config keys (broker.host, curve, ...).
    def initialize(settings)
      @lock = Mutex.new
      @closed = false
      @ptr = nil
      # The engine thread exists only in this process; a forked child must
      # not wait for it (e.g. from at_exit).
      @owner_pid = Process.pid
      out = FFI::MemoryPointer.new(:pointer)
      # An interrupt (Timeout, Thread#kill) cannot stop the native call; it
      # is held until the handle is stored, then raised here, and the
      # connection made meanwhile is closed rather than lost.
      Thread.handle_interrupt(Object => :never) do
        Config.with(settings) do |cfg|
          Mc0.check(Native.mc0_connector_new(cfg, out), 'connecting to the broker')
        end
        @ptr = FFI::AutoPointer.new(out.read_pointer, Native.method(:mc0_connector_free))
        self.class.track(self)
      end
    rescue Exception # rubocop:disable Lint/RescueException
      close if @ptr
      raise
    ensure
      out&.free
    end

    def closed?
      @closed
    end

    def subscribe(topic)
      call('subscribe') { |c| Mc0.check(Native.mc0_connector_subscribe(c, topic.to_s), "subscribe #{topic.inspect}") }
    end

    def unsubscribe(topic)
      call('unsubscribe') do |c|
        Mc0.check(Native.mc0_connector_unsubscribe(c, topic.to_s), "unsubscribe #{topic.inspect}")
      end
    end

    # Subscribes to topic as a consumer of its queue `queue` (mc0d keeps the
    # topic's messages for the queue while no consumer runs; at least once:
    # see mc0_connector_subscribe_queue in mc0.h). Undo with #unsubscribe.
    def subscribe_queue(topic, queue)
      call('subscribe') do |c|
        Mc0.check(Native.mc0_connector_subscribe_queue(c, topic.to_s, queue.to_s),
                  "subscribe to queue #{queue.inspect} of #{topic.inspect}")
      end
    end

    # Acknowledges a queue delivery (a Mc0::Message from #receive, or its
    # DELIVERY id): needed only with the setting explicit_ack = true. A
    # message not from a queue is ignored.
    def ack(message)
      id = message.is_a?(Message) ? message.headers['DELIVERY'] : message
      return nil if id.nil?

      call('ack') { |c| Mc0.check(Native.mc0_connector_ack(c, Integer(id)), 'ack') }
    end

    # headers: {name => value}; values are sent as bytes. ttl_ms (positional, so a braceless headers hash stays one): the
    # message's time-to-live (nil: none): once it has passed it is never
    # sent, and mc0d never delivers it from a queue.
    def publish(topic, body, headers = {}, ttl_ms = nil)
      names = headers.keys.map(&:to_s)
      values = headers.values.map { |v| v.to_s.b }
      body = body.to_s.b
      name_ptrs = names.map { |n| FFI::MemoryPointer.from_string(n) }
      value_ptrs = values.map { |v| bytes_pointer(v) }
      count = names.size
      names_arr = FFI::MemoryPointer.new(:pointer, [count, 1].max)
      values_arr = FFI::MemoryPointer.new(:pointer, [count, 1].max)
      lens_arr = FFI::MemoryPointer.new(:size_t, [count, 1].max)
      names_arr.put_array_of_pointer(0, name_ptrs)
      values_arr.put_array_of_pointer(0, value_ptrs)
      lens_arr.write_array_of_type(:size_t, :put_ulong, values.map(&:bytesize)) if count.positive?
      body_ptr = bytes_pointer(body)
      call('publish') do |c|
        status = if ttl_ms
                   Native.mc0_connector_publish_ttl(c, topic.to_s, names_arr, values_arr, lens_arr, count,
                                                    body_ptr, body.bytesize, Integer(ttl_ms))
                 else
                   Native.mc0_connector_publish(c, topic.to_s, names_arr, values_arr, lens_arr, count,
                                                body_ptr, body.bytesize)
                 end
        Mc0.check(status, "publish to #{topic.inspect}")
      end
    ensure
      [body_ptr, lens_arr, values_arr, names_arr, *value_ptrs, *name_ptrs].each { |p| p&.free }
    end

    # Waits until what was published so far is acknowledged by the broker,
    # at most timeout_ms. Raises TimeoutError when that takes longer.
    def flush(timeout_ms)
      call('flush') { |c| Mc0.check(Native.mc0_connector_flush(c, Integer(timeout_ms)), 'flush') }
    end

    # The connector's counters, the broker in use and the last error as a
    # Hash with String keys (handshakes, reconnects, sent, acknowledged,
    # publishes_dropped, received, messages_dropped, failovers, broker
    # ("host:port" in use or being tried), broker_index, last_error,
    # last_error_at; see mc0_connector_stats_json in mc0.h: keys are only
    # ever added). Also after close.
    def stats
      ptr = @lock.synchronize { @ptr }
      raise ClosedError.new('stats: connector is gone', :closed) if ptr.nil?

      JSON.parse(Mc0.take_string(Native.mc0_connector_stats_json(ptr), 'mc0_connector_stats_json'))
    end

    # Waits up to timeout_ms for a message. Returns a Mc0::Message, or nil on
    # timeout. Raises ClosedError once closed, other Mc0::Error on failure.
    def receive(timeout_ms)
      out = FFI::MemoryPointer.new(:pointer)
      call('receive') do |c|
        # A message taken from libmc0 is always converted and freed; an
        # interrupt arriving meanwhile is raised after that (the message is
        # then dropped, as whoever interrupted no longer wants it).
        Thread.handle_interrupt(Object => :never) do
          status = Native.mc0_connector_receive(c, Integer(timeout_ms), out)
          next nil if status == CODES[:timeout] # the normal "nothing yet"

          Mc0.check(status, 'receive')
          msg = out.read_pointer
          begin
            convert(msg)
          ensure
            Native.mc0_message_free(msg)
          end
        end
      end
    ensure
      out&.free
    end

    # Closes the connection (DISCONNECT) and wakes blocked receivers (they
    # raise ClosedError). Idempotent. The handle is freed with this object.
    def close
      Thread.handle_interrupt(Object => :never) { close_handle }
    end

    private

    def close_handle
      ptr = @lock.synchronize do
        return nil if @closed || @ptr.nil?

        @closed = true
        @ptr
      end
      if Process.pid == @owner_pid
        Native.mc0_connector_close(ptr)
      else
        # The engine thread is the parent's: leave the handle alone here.
        ptr.autorelease = false
      end
      self.class.untrack(self)
      nil
    end

    def call(what)
      raise ClosedError.new("#{what}: connector is closed", :closed) if @closed

      yield @ptr
    end

    def bytes_pointer(str)
      ptr = FFI::MemoryPointer.new(:uint8, [str.bytesize, 1].max)
      ptr.put_bytes(0, str) unless str.empty?
      ptr
    end

    def convert(msg)
      len = FFI::MemoryPointer.new(:size_t)
      topic = read_text(Native.mc0_message_topic(msg)) || ''
      headers = {}
      Native.mc0_message_header_count(msg).times do |i|
        name = read_text(Native.mc0_message_header_name(msg, i))
        next unless name

        headers[name] = read_bytes(Native.mc0_message_header_value(msg, i, len), len)
      end
      body_ptr = Native.mc0_message_body(msg, len)
      Message.new(topic, headers, read_bytes(body_ptr, len),
                  read_text(Native.mc0_message_sender(msg)), read_text(Native.mc0_message_sender_key(msg)))
    ensure
      len&.free
    end

    # A NUL-terminated string owned by the message, or nil for NULL.
    def read_text(ptr)
      ptr.null? ? nil : ptr.read_string.force_encoding(Encoding::UTF_8)
    end

    def read_bytes(ptr, len_ptr)
      return ''.b if ptr.nil? || ptr.null?

      n = len_ptr.read(:size_t)
      n.zero? ? ''.b : ptr.read_bytes(n)
    end
  end

  # Close connectors while ruby-ffi's callback dispatcher still runs (see top).
  at_exit do
    if Mc0.loaded?
      Connector.close_all
      Mc0.set_logger
    end
  rescue StandardError
    nil
  end
end
