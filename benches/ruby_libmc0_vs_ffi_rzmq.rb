#!/usr/bin/env ruby
# frozen_string_literal: true

# Ruby through libmc0 versus Ruby through ffi-rzmq (what the legacy MCollective
# plugin used), against the same broker in the same run, CURVE on:
#
#   pipelined   publish N messages of S bytes to a topic the client itself
#               subscribes to, then receive all N; messages/s
#   sequential  publish one message, receive it, repeat R times; round trips/s
#               and latency percentiles
#
# libmc0 is loaded directly with the ffi gem (functions per include/mc0.h);
# the ffi-rzmq client speaks PROTOCOL.md itself on a DEALER socket, as the
# legacy plugin did: PUT without ID, strings in and out. Its receive
# high-water mark is unbounded so that a burst is never dropped on the way
# back (libmc0 gets receive_queue/send_queue >= N for the same reason).
#
# usage: ruby benches/ruby_libmc0_vs_ffi_rzmq.rb [--lib target/release/libmc0.so]
#          [--mc0d target/release/mc0d | --broker HOST:PORT --broker-key FILE]
#          [--messages 100000] [--size 1024] [--round-trips 5000] [--repeat 3] [--json]
# Exits 1 if a message was lost, 2 on errors.

require 'etc'
require 'ffi'
require 'ffi-rzmq'
require 'fileutils'
require 'json'
require 'optparse'
require 'socket'
require 'tmpdir'

ROOT = File.expand_path('..', __dir__)
opts = {
  lib: ENV['MC0_LIBRARY'] || File.join(ROOT, 'target/release/libmc0.so'),
  mc0d: File.join(ROOT, 'target/release/mc0d'),
  broker: nil, broker_key: nil,
  messages: 100_000, size: 1024, round_trips: 5000, repeat: 1, json: false, timeout: 60
}
OptionParser.new do |o|
  o.on('--lib PATH') { |v| opts[:lib] = v }
  o.on('--mc0d PATH') { |v| opts[:mc0d] = v }
  o.on('--broker HOST:PORT') { |v| opts[:broker] = v }
  o.on('--broker-key FILE') { |v| opts[:broker_key] = v }
  o.on('--messages N', Integer) { |v| opts[:messages] = v }
  o.on('--size N', Integer) { |v| opts[:size] = v }
  o.on('--round-trips N', Integer) { |v| opts[:round_trips] = v }
  o.on('--repeat N', Integer) { |v| opts[:repeat] = v }
  o.on('--timeout SECS', Integer) { |v| opts[:timeout] = v }
  o.on('--send-queue N', Integer, 'libmc0 send_queue (default: the connector default)') { |v| opts[:send_queue] = v }
  o.on('--only NAME', 'libmc0 or ffi-rzmq') { |v| opts[:only] = v }
  o.on('--json') { opts[:json] = true }
end.parse!
LIBMC0 = opts[:lib]

# ---- libmc0 through FFI ----
module Mc0Lib
  extend FFI::Library
  ffi_lib LIBMC0
  # Calls that can wait release the GVL, as the MCollective plugin binds them.
  attach_function :mc0_last_error, [], :string
  attach_function :mc0_config_new, [], :pointer
  attach_function :mc0_config_set, %i[pointer string string], :int
  attach_function :mc0_config_free, [:pointer], :void
  attach_function :mc0_connector_new, %i[pointer pointer], :int, blocking: true
  attach_function :mc0_connector_subscribe, %i[pointer string], :int, blocking: true
  attach_function :mc0_connector_publish, %i[pointer string pointer pointer pointer size_t pointer size_t], :int,
                  blocking: true
  attach_function :mc0_connector_flush, %i[pointer int32], :int, blocking: true
  attach_function :mc0_connector_receive, %i[pointer int32 pointer], :int, blocking: true
  attach_function :mc0_connector_close, [:pointer], :int, blocking: true
  attach_function :mc0_connector_free, [:pointer], :void, blocking: true
  attach_function :mc0_message_body, %i[pointer pointer], :pointer
  attach_function :mc0_message_free, [:pointer], :void
  attach_function :mc0_curve_keypair, %i[pointer pointer], :int

  def self.check(rc, what)
    raise "#{what}: status #{rc}: #{mc0_last_error}" unless rc.zero?
  end
end

# A libmc0 connector with the calls the benchmark needs.
class Mc0Client
  def initialize(settings)
    cfg = Mc0Lib.mc0_config_new
    settings.each { |k, v| Mc0Lib.check(Mc0Lib.mc0_config_set(cfg, k, v.to_s), "config #{k}") }
    out = FFI::MemoryPointer.new(:pointer)
    Mc0Lib.check(Mc0Lib.mc0_connector_new(cfg, out), 'connect')
    @c = out.read_pointer
    @queue_full = 0
  ensure
    Mc0Lib.mc0_config_free(cfg) if cfg
  end

  def subscribe(topic)
    Mc0Lib.check(Mc0Lib.mc0_connector_subscribe(@c, topic), 'subscribe')
  end

  # On QUEUE_FULL (send_queue publishes not yet acknowledged) waits for the
  # acknowledgements and retries, as an application that must not lose
  # messages would.
  def publish(topic, body)
    loop do
      rc = Mc0Lib.mc0_connector_publish(@c, topic, nil, nil, nil, 0, body, body.bytesize)
      return if rc.zero?
      raise "publish: status #{rc}: #{Mc0Lib.mc0_last_error}" unless rc == 7 # MC0_ERR_QUEUE_FULL

      @queue_full += 1
      Mc0Lib.check(Mc0Lib.mc0_connector_flush(@c, 10_000), 'flush')
    end
  end

  attr_reader :queue_full

  # The body of the next message, or nil on timeout.
  def receive(timeout_ms)
    out = FFI::MemoryPointer.new(:pointer)
    rc = Mc0Lib.mc0_connector_receive(@c, timeout_ms, out)
    return nil if rc == 4 # MC0_ERR_TIMEOUT

    Mc0Lib.check(rc, 'receive')
    msg = out.read_pointer
    len = FFI::MemoryPointer.new(:size_t)
    body = Mc0Lib.mc0_message_body(msg, len).read_string(len.read(:size_t))
    Mc0Lib.mc0_message_free(msg)
    body
  end

  def close
    Mc0Lib.mc0_connector_close(@c)
    Mc0Lib.mc0_connector_free(@c)
  end
end

# ---- ffi-rzmq speaking the protocol ----
class RzmqClient
  def initialize(ctx, endpoint, server_z85, identity, keypair)
    @s = ctx.socket(ZMQ::DEALER)
    ok = [
      @s.setsockopt(ZMQ::LINGER, 0),
      @s.setsockopt(ZMQ::RCVHWM, 0),
      @s.setsockopt(ZMQ::IDENTITY, identity),
      @s.setsockopt(ZMQ::CURVE_SERVERKEY, server_z85),
      @s.setsockopt(ZMQ::CURVE_PUBLICKEY, keypair[0]),
      @s.setsockopt(ZMQ::CURVE_SECRETKEY, keypair[1]),
      @s.connect(endpoint)
    ]
    raise "ffi-rzmq socket setup failed: #{ZMQ::Util.error_string}" unless ok.all? { |rc| ZMQ::Util.resultcode_ok?(rc) }

    command(['CONNECT', 'ID', 'c', 'TTL', '30000', 'VERSION', '0.2'], 'c')
  end

  # Sends a command with an ID and waits for its OK.
  def command(frames, id, timeout_s = 10)
    @s.send_strings([''] + frames)
    deadline = Time.now + timeout_s
    loop do
      raise "no OK for #{frames.first}" if Time.now > deadline

      reply = recv_frames(1000) or next
      return if reply[1] == 'OK' && reply[3] == id
      raise "broker: #{reply.inspect}" if reply[1] == 'ERROR'
    end
  end

  def subscribe(topic)
    command(['SUB', 'ID', 's', '', topic], 's')
  end

  def publish(topic, body)
    rc = @s.send_strings(['', 'PUT', 'TOPIC', topic, '', body])
    raise "send: #{ZMQ::Util.error_string}" unless ZMQ::Util.resultcode_ok?(rc)
  end

  # The next message's frames, or nil after timeout_ms.
  def recv_frames(timeout_ms)
    frames = []
    return frames if ZMQ::Util.resultcode_ok?(@s.recv_strings(frames, ZMQ::DONTWAIT))

    @poller ||= ZMQ::Poller.new.tap { |p| p.register_readable(@s) }
    return nil unless @poller.poll(timeout_ms).positive?

    frames = []
    ZMQ::Util.resultcode_ok?(@s.recv_strings(frames)) ? frames : nil
  end

  # The body of the next MESSAGE, or nil on timeout.
  def receive(timeout_ms)
    deadline = Time.now + timeout_ms / 1000.0
    loop do
      f = recv_frames([((deadline - Time.now) * 1000).ceil, 1].max)
      return nil unless f
      return f.last if f[1] == 'MESSAGE'
      return nil if Time.now > deadline
    end
  end

  def close
    @s.send_strings(['', 'DISCONNECT'])
    @s.close
  end
end

# ---- broker ----
def free_port
  s = TCPServer.new('127.0.0.1', 0)
  s.addr[1]
ensure
  s&.close
end

def wait_ready(ctx, endpoint, server_z85, timeout_s)
  deadline = Time.now + timeout_s
  loop do
    c = RzmqClient.new(ctx, endpoint, server_z85, "probe-#{rand(1 << 30)}", ZMQ::Util.curve_keypair)
    c.close
    return
  rescue RuntimeError => e
    c&.close rescue nil # rubocop:disable Style/RescueModifier
    raise "broker not ready at #{endpoint}: #{e.message}" if Time.now > deadline
  end
end

dir = Dir.mktmpdir('mc0-ruby-bench')
broker_pid = nil
ctx = ZMQ::Context.new
at_exit do
  if broker_pid
    Process.kill('TERM', broker_pid)
    Process.wait(broker_pid)
  end
  FileUtils.rm_rf(dir)
end

if opts[:broker]
  endpoint = "tcp://#{opts[:broker]}"
  broker_public_file = opts[:broker_key] or abort('--broker needs --broker-key FILE')
  server_z85 = File.read(broker_public_file).strip
else
  server_z85, secret = ZMQ::Util.curve_keypair
  broker_public_file = File.join(dir, 'broker.public')
  File.write(broker_public_file, "#{server_z85}\n")
  File.write(File.join(dir, 'broker.private'), "#{secret}\n", perm: 0o600)
  port = free_port
  broker_pid = spawn(opts[:mc0d], '--curve-private-key', File.join(dir, 'broker.private'), '--bind', '127.0.0.1',
                     '--port', port.to_s, '--log-level', 'warn', out: File::NULL)
  endpoint = "tcp://127.0.0.1:#{port}"
end
wait_ready(ctx, endpoint, server_z85, 15)

def write_keypair(dir, name)
  pub, sec = ZMQ::Util.curve_keypair
  File.write(File.join(dir, "#{name}.public"), "#{pub}\n")
  File.write(File.join(dir, "#{name}.private"), "#{sec}\n", perm: 0o600)
  [File.join(dir, "#{name}.public"), File.join(dir, "#{name}.private")]
end

host, port = endpoint.delete_prefix('tcp://').split(':')
make = {
  'libmc0' => lambda do |name|
    pub, sec = write_keypair(dir, name)
    settings = { 'broker.host' => host, 'broker.port' => port, 'broker.public_key' => broker_public_file,
                 'public_key' => pub, 'private_key' => sec, 'identity' => name,
                 # Everything is received after everything is published.
                 'receive_queue' => opts[:messages] + 1000 }
    settings['send_queue'] = opts[:send_queue] if opts[:send_queue]
    Mc0Client.new(settings)
  end,
  'ffi-rzmq' => ->(name) { RzmqClient.new(ctx, endpoint, server_z85, "#{name} #{Process.pid}", ZMQ::Util.curve_keypair) }
}

PAD = ('x' * 2048).freeze
def body(seq, size)
  [seq].pack('Q<') + PAD[0, size - 8]
end

# Publish all, then receive all; returns [messages/s, lost].
def pipelined(client, topic, n, size, timeout_s)
  client.subscribe(topic)
  bodies = Array.new(n) { |i| body(i, size) }
  seen = Array.new(n, false)
  got = 0
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  bodies.each { |b| client.publish(topic, b) }
  deadline = t0 + timeout_s
  while got < n && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
    b = client.receive(2000) or break
    seq = b.unpack1('Q<')
    unless seen[seq]
      seen[seq] = true
      got += 1
    end
  end
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  [got / t, n - got]
end

# One message out and back at a time; returns [round trips/s, p50 ms, p99 ms, lost].
def sequential(client, topic, n, size)
  client.subscribe(topic)
  lat = []
  lost = 0
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  n.times do |i|
    s = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    client.publish(topic, body(i, size))
    b = client.receive(5000)
    if b.nil? || b.unpack1('Q<') != i
      lost += 1
      next
    end
    lat << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - s) * 1000.0
  end
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  lat.sort!
  pct = ->(p) { lat.empty? ? Float::NAN : lat[[(p / 100.0 * lat.size).ceil, 1].max - 1] }
  [lat.size / t, pct.call(50), pct.call(99), lost]
end

def median(xs)
  s = xs.sort
  s.empty? ? Float::NAN : (s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0)
end

say = opts[:json] ? ->(l) { warn l } : ->(l) { puts l }
cpu = File.read('/proc/cpuinfo')[/model name\s*:\s*(.*)/, 1]
say.call("ruby #{RUBY_VERSION}, ffi #{Gem.loaded_specs['ffi']&.version || FFI::VERSION}, ffi-rzmq, " \
         "libzmq #{LibZMQ.version.values_at(:major, :minor, :patch).join('.')}, " \
         "#{Etc.nprocessors} x #{cpu}; broker #{endpoint}, CURVE on")
results = Hash.new { |h, k| h[k] = Hash.new { |hh, kk| hh[kk] = [] } }
lost_total = 0
opts[:repeat].times do |rep|
  make.each do |name, mk|
    next if opts[:only] && opts[:only] != name

    c = mk.call("rb-#{name}-pipe-#{rep}")
    rate, lost = pipelined(c, "mcollective bench #{name} pipe #{rep} #{Process.pid}", opts[:messages], opts[:size],
                           opts[:timeout])
    c.close
    c = mk.call("rb-#{name}-seq-#{rep}")
    srate, p50, p99, slost = sequential(c, "mcollective bench #{name} seq #{rep} #{Process.pid}", opts[:round_trips],
                                        opts[:size])
    c.close
    lost_total += lost + slost
    results[name][:pipelined] << rate
    results[name][:sequential] << srate
    results[name][:p50] << p50
    say.call(format('  %-9s pipelined %d x %d B: %.0f msg/s (%d lost)   sequential %d: %.0f round trips/s, ' \
                    'p50 %.3f ms p99 %.3f ms (%d lost)', name, opts[:messages], opts[:size], rate, lost,
                    opts[:round_trips], srate, p50, p99, slost))
    puts JSON.generate(target: name, rep: rep, pipelined_per_s: rate, pipelined_lost: lost, sequential_per_s: srate,
                       sequential_p50_ms: p50, sequential_p99_ms: p99, sequential_lost: slost) if opts[:json]
  end
end
m = ->(name, k) { median(results[name][k]) }
exit(lost_total.zero? ? 0 : 1) if opts[:only]
%w[libmc0 ffi-rzmq].each do |name|
  say.call(format('  median %-9s pipelined %.0f msg/s, sequential %.0f round trips/s, p50 %.3f ms', name,
                  m.call(name, :pipelined), m.call(name, :sequential), m.call(name, :p50)))
end
ratio_pipe = m.call('libmc0', :pipelined) / m.call('ffi-rzmq', :pipelined)
ratio_seq = m.call('libmc0', :sequential) / m.call('ffi-rzmq', :sequential)
ratio_p50 = m.call('ffi-rzmq', :p50) / m.call('libmc0', :p50)
say.call(format('  libmc0/ffi-rzmq: pipelined %.2fx (target >= 1.5x), sequential round trips/s %.2fx and p50 %.2fx ' \
                '(target >= 1.0x; > 1 is libmc0 faster)', ratio_pipe, ratio_seq, ratio_p50))
puts JSON.generate(summary: true, pipelined_ratio: ratio_pipe, sequential_ratio: ratio_seq, p50_ratio: ratio_p50) if opts[:json]
exit(lost_total.zero? ? 0 : 1)
