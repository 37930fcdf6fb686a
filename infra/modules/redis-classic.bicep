// Azure Cache for Redis (Microsoft.Cache/redis), the older service that Azure Managed Redis replaces.
// Entra ID only: 'aad-enabled' on, access keys off, and the app identity assigned the built-in
// 'Data Owner' access policy (+@all on all keys: the handler runs Lua scripts and stream commands).

@description('Cache name.')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Standard or Premium. AOF persistence needs Premium.')
@allowed([
  'Standard'
  'Premium'
])
param skuName string

@description('Size: C0-C6 for Standard, P1-P5 for Premium (give the number).')
param capacity int

@description('AOF persistence (applied only on Premium).')
param persistence bool

@description('Principal (object) id of the app identity.')
param principalId string

@description('Display name of the app identity (the access policy assignment alias).')
param principalName string

@description('Storage account that receives the AOF files (reached with the cache\'s own managed identity).')
param persistenceStorageAccountName string

var aofEnabled = persistence && skuName == 'Premium'
var cacheIdentityName = 'id-${name}'

// Storage Blob Data Contributor: lets the cache's identity write AOF files without a storage key.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource persistenceStorage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: persistenceStorageAccountName
}

// The cache's own identity for persistence, created (and given its role) before the cache, so the
// cache can write AOF files from its first minute.
resource cacheIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (aofEnabled) {
  name: cacheIdentityName
  location: location
  tags: tags
}

resource cacheIdentityStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (aofEnabled) {
  name: guid(persistenceStorage.id, cacheIdentityName, storageBlobDataContributor)
  scope: persistenceStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: aofEnabled ? cacheIdentity!.properties.principalId : ''
    principalType: 'ServicePrincipal'
  }
}

var baseConfiguration = {
  // Microsoft Entra ID authentication.
  'aad-enabled': 'true'
  // Evict only keys with a TTL; the write-behind and dead-letter streams have none.
  'maxmemory-policy': 'volatile-lru'
}

// AOF to blob storage with managed identity (no SAS, no key): the "connection string" is just the
// blob endpoint.
var aofConfiguration = {
  'aof-backup-enabled': 'true'
  'aof-storage-connection-string-0': persistenceStorage.properties.primaryEndpoints.blob
  'preferred-data-persistence-auth-method': 'ManagedIdentity'
  'storage-subscription-id': subscription().subscriptionId
}

resource cache 'Microsoft.Cache/redis@2024-11-01' = {
  name: name
  location: location
  tags: tags
  identity: aofEnabled
    ? {
        type: 'UserAssigned'
        userAssignedIdentities: {
          '${resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', cacheIdentityName)}': {}
        }
      }
    : {
        type: 'None'
      }
  properties: {
    sku: {
      name: skuName
      family: skuName == 'Premium' ? 'P' : 'C'
      capacity: capacity
    }
    enableNonSslPort: false
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    redisVersion: '6'
    // Keys off: only Entra ID tokens of identities with an access policy assignment get in.
    disableAccessKeyAuthentication: true
    redisConfiguration: union(baseConfiguration, aofEnabled ? aofConfiguration : {})
  }
  dependsOn: [
    cacheIdentityStorage
  ]
}

resource appAccess 'Microsoft.Cache/redis/accessPolicyAssignments@2024-11-01' = {
  parent: cache
  name: guid(cache.id, principalId, 'Data Owner')
  properties: {
    accessPolicyName: 'Data Owner'
    objectId: principalId
    objectIdAlias: principalName
  }
}

@description('host:port for RedisCache__hostName, e.g. name.redis.cache.windows.net:6380.')
output hostName string = '${cache.properties.hostName}:${cache.properties.sslPort}'

output persistenceEnabled bool = aofEnabled
