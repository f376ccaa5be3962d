# The `mc0` agent: how a node reports its transport's health through
# MCollective itself (`mco rpc mc0 counters`). MCollective's own rpcutil
# daemon_stats reports only mcollectived's runner counters and has no hook
# for the connector, so the connector's figures get an agent of their own,
# read from the running connector plugin (Connector::Zeromq#stats, over
# libmc0's mc0_connector_stats_json). Install it with the connector
# (mcollective/agent/mc0.rb and mc0.ddl in the plugin directory). The
# action is `counters`, not `stats`: MCollective's RPC client has a `stats`
# method of its own, which would shadow an action of that name.
module MCollective
  module Agent
    class Mc0 < RPC::Agent
      action 'counters' do
        connector = PluginManager['connector_plugin']
        reply.fail!("this node's connector is #{connector.class}, not mc0's zeromq") unless connector.respond_to?(:stats)
        stats = connector.stats
        reply.fail!("the mc0 connector (#{connector.class}) is not connected") unless stats

        stats.each { |key, value| reply[key.to_sym] = value }
      end
    end
  end
end
