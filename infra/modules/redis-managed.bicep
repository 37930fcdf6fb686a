// Azure Managed Redis (Microsoft.Cache/redisEnterprise): Entra ID only, TLS only, optional AOF.
// API 2025-07-01 is the GA version that has accessKeysAuthentication, publicNetworkAccess and the
// 'NoCluster' clustering policy.

@description('Cluster name.')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('SKU, e.g. Balanced_B0, Balanced_B1, MemoryOptimized_M10, ComputeOptimized_X3.')
param skuName string

@description('''How the database is exposed to clients (the handler works with each):
- EnterpriseCluster: one endpoint in front of a proxy, sharded; scripts and multi-key commands must
  keep their keys in one hash slot (the handler's do).
- OSSCluster: clients connect to every shard with the Redis Cluster protocol (the handler's cluster
  client does).
- NoCluster: one unsharded endpoint, only on the smaller SKUs.''')
@allowed([
  'NoCluster'
  'EnterpriseCluster'
  'OSSCluster'
])
param clusteringPolicy string

@description('Append-only-file persistence (every second), so queued write-behind events survive a node restart.')
param persistence bool

@description('Principal (object) id of the app identity; it becomes a Redis user through the default access policy.')
param principalId string

@description('Name for the access policy assignment (letters and digits only, at most 60).')
param accessPolicyAssignmentName string

resource cluster 'Microsoft.Cache/redisEnterprise@2025-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: '1.2'
    highAvailability: 'Enabled'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-07-01' = {
  parent: cluster
  // Azure Managed Redis has exactly one database and it must be called 'default'.
  name: 'default'
  properties: {
    // TLS only, on port 10000.
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: clusteringPolicy
    // No access keys: the only way in is an Entra ID token of an assigned identity.
    accessKeysAuthentication: 'Disabled'
    // Evict only keys that have a TTL (cache entries). The write-behind stream and the dead-letter
    // stream have no TTL, so memory pressure can never silently drop queued writes.
    evictionPolicy: 'VolatileLRU'
    persistence: persistence
      ? {
          aofEnabled: true
          aofFrequency: '1s'
          rdbEnabled: false
        }
      : {
          aofEnabled: false
          rdbEnabled: false
        }
  }
}

// 'default' is the only access policy Azure Managed Redis offers: full data access for that identity.
resource appAccess 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-07-01' = {
  parent: database
  name: accessPolicyAssignmentName
  properties: {
    accessPolicyName: 'default'
    user: {
      objectId: principalId
    }
  }
}

@description('host:port for RedisCache__hostName, e.g. name.region.redis.azure.net:10000.')
output hostName string = '${cluster.properties.hostName}:${database.properties.port}'

output persistenceEnabled bool = persistence
