// Everything the Redis caching-patterns custom handler needs on Azure, with no keys anywhere:
// one user-assigned managed identity reaches host storage, Application Insights, Redis, Cosmos DB
// and (optionally) Event Hubs through Entra ID roles, and every service has its local auth off.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
//   azd up                      (azure.yaml: builds `handler` and deploys it)
//
// See infra/README.md for the choices (plan, Redis kind and clustering, roles).
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Short environment name, mixed into the resource names (azd: the environment name).')
@minLength(1)
@maxLength(32)
param environmentName string = 'cachepatterns'

@description('Region of every resource.')
param location string = resourceGroup().location

@description('''Hosting plan SKU: Dedicated (B1-B3, S1-S3, P0v3-P3v3; default B1: cheapest SKU with
Always On), the Linux plans that run custom handlers without a storage key. Elastic Premium and
classic Linux Consumption also run custom handlers but need an Azure Files content share, which only
takes a storage key; Flex Consumption (FC1) is not documented to accept the custom runtime
(infra/README.md, "Which plan"). None of them is offered here.''')
@allowed([
  'B1'
  'B2'
  'B3'
  'S1'
  'S2'
  'S3'
  'P0v3'
  'P1v3'
  'P2v3'
  'P3v3'
])
param planSku string = 'B1'

@description('Instance count (every instance runs the handler).')
@minValue(1)
@maxValue(30)
param planCapacity int = 1

@description('managed: Azure Managed Redis (redisEnterprise, default). classic: Azure Cache for Redis.')
@allowed([
  'managed'
  'classic'
])
param redisKind string = 'managed'

@description('''Azure Managed Redis clustering policy; the handler works with all three (it finds out
which from the endpoint itself). EnterpriseCluster (default): one TLS endpoint behind Redis's proxy,
sharded; every script and multi-key command of the handler keeps its keys in one hash slot, as the
proxy requires. OSSCluster: the handler talks to every shard directly with its cluster client (the
most throughput). NoCluster: one unsharded endpoint, smaller SKUs only.''')
@allowed([
  'NoCluster'
  'EnterpriseCluster'
  'OSSCluster'
])
param redisClusteringPolicy string = 'EnterpriseCluster'

@description('Azure Managed Redis SKU.')
param managedRedisSku string = 'Balanced_B0'

@description('Azure Cache for Redis tier (AOF persistence needs Premium).')
@allowed([
  'Standard'
  'Premium'
])
param classicRedisSku string = 'Premium'

@description('Azure Cache for Redis size (C0-C6 Standard, P1-P5 Premium).')
@minValue(0)
@maxValue(6)
param classicRedisCapacity int = 1

@description('AOF persistence on Redis. Keep it on while write-behind uses the Redis Stream: accepted writes live only in Redis until applied.')
param redisPersistence bool = true

@description('Prefix of every Redis key the handler writes (RedisInstanceName).')
param redisInstanceName string = ''

@description('Write-behind queue: redisStream (default, drained in-process by the handler) or eventHubs (drained by the EventHubConsumer function).')
@allowed([
  'redisStream'
  'eventHubs'
])
param writeBehindQueue string = 'redisStream'

@description('Event hub name. Always set as the EventHubName app setting: EventHubConsumer/function.json reads %EventHubName% even when disabled.')
param eventHubName string = 'cache-writes'

@description('Dedicated consumer group of the EventHubConsumer trigger (function.json reads %EventHubConsumerGroup%).')
param eventHubConsumerGroup string = 'writebehind'

@description('Event hub partitions.')
@minValue(1)
@maxValue(32)
param eventHubPartitionCount int = 4

@description('Cosmos DB database id.')
param cosmosDatabaseName string = 'cachepatterns'

@description('Cosmos DB container id (partition key /id).')
param cosmosContainerName string = 'items'

@description('Cosmos DB serverless (true) or provisioned autoscale (false).')
param cosmosServerless bool = true

@description('NCRONTAB schedule of the RefreshAhead timer. Always set: function.json reads %RefreshAheadSchedule%.')
param refreshAheadSchedule string = '0 */5 * * * *'

@description('Logical lifetime of a cached value, in seconds.')
@minValue(1)
param cacheTtlSeconds int = 300

@description('Extra tags for every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------
// Names and switches
// ---------------------------------------------------------------------------------------------

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var allTags = union(tags, {
  'azd-env-name': environmentName
})
var useEventHubs = writeBehindQueue == 'eventHubs'
var useManagedRedis = redisKind == 'managed'

// ---------------------------------------------------------------------------------------------
// Identity: the one identity the app uses for everything
// ---------------------------------------------------------------------------------------------

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-func-${token}'
  location: location
  tags: allTags
}

// ---------------------------------------------------------------------------------------------
// Backing services (each module assigns the identity the data-plane roles it needs there)
// ---------------------------------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: allTags
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
    principalId: appIdentity.properties.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${token}'
    location: location
    tags: allTags
    principalId: appIdentity.properties.principalId
  }
}

module redisManaged 'modules/redis-managed.bicep' = if (useManagedRedis) {
  name: 'redis-managed'
  params: {
    name: 'amr-${token}'
    location: location
    tags: allTags
    skuName: managedRedisSku
    clusteringPolicy: redisClusteringPolicy
    persistence: redisPersistence
    principalId: appIdentity.properties.principalId
    accessPolicyAssignmentName: 'app${uniqueString(appIdentity.id)}'
  }
}

module redisClassic 'modules/redis-classic.bicep' = if (!useManagedRedis) {
  name: 'redis-classic'
  params: {
    name: 'redis-${token}'
    location: location
    tags: allTags
    skuName: classicRedisSku
    capacity: classicRedisCapacity
    persistence: redisPersistence
    principalId: appIdentity.properties.principalId
    principalName: appIdentity.name
    persistenceStorageAccountName: storage.outputs.name
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  params: {
    name: 'cosmos-${token}'
    location: location
    tags: allTags
    databaseName: cosmosDatabaseName
    containerName: cosmosContainerName
    serverless: cosmosServerless
    principalId: appIdentity.properties.principalId
  }
}

module eventHubs 'modules/eventhubs.bicep' = if (useEventHubs) {
  name: 'eventhubs'
  params: {
    namespaceName: 'evhns-${token}'
    location: location
    tags: allTags
    eventHubName: eventHubName
    consumerGroupName: eventHubConsumerGroup
    partitionCount: eventHubPartitionCount
    principalId: appIdentity.properties.principalId
  }
}

var redisHostName = useManagedRedis ? redisManaged!.outputs.hostName : redisClassic!.outputs.hostName

// ---------------------------------------------------------------------------------------------
// App settings (scripts/check_infra.py --app-settings lists them from these variables)
// ---------------------------------------------------------------------------------------------

// The custom handler runtime on Functions 4.x.
var runtimeAppSettings = [
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
  // Run from the zip that azd / `az functionapp deployment source config-zip` uploads.
  { name: 'WEBSITE_RUN_FROM_PACKAGE', value: '1' }
]

var commonAppSettings = [
  // Host storage through the identity: no AzureWebJobsStorage connection string.
  { name: 'AzureWebJobsStorage__accountName', value: storage.outputs.name }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: appIdentity.properties.clientId }
  // Application Insights with local auth off: the host authenticates with the identity.
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: monitoring.outputs.connectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${appIdentity.properties.clientId};Authorization=AAD' }
  // Redis with Entra ID (host:port; TLS).
  { name: 'RedisCache__hostName', value: redisHostName }
  { name: 'RedisCache__clientId', value: appIdentity.properties.clientId }
  { name: 'RedisInstanceName', value: redisInstanceName }
  // Cosmos DB with Entra ID, for the handler and for the StoreChanges trigger (the Functions host
  // takes __clientId only with __credential=managedidentity; the handler ignores __credential).
  { name: 'CosmosDBConnection__accountEndpoint', value: cosmos.outputs.endpoint }
  { name: 'CosmosDBConnection__credential', value: 'managedidentity' }
  { name: 'CosmosDBConnection__clientId', value: appIdentity.properties.clientId }
  { name: 'CosmosDBDatabase', value: cosmosDatabaseName }
  { name: 'CosmosDBContainer', value: cosmosContainerName }
  // Referenced by function.json files, so always set, whatever the queue: indexing fails without them.
  { name: 'EventHubName', value: eventHubName }
  { name: 'RefreshAheadSchedule', value: refreshAheadSchedule }
  // EventHubConsumer/function.json reads %EventHubConsumerGroup%: always set, like %EventHubName%.
  { name: 'EventHubConsumerGroup', value: eventHubConsumerGroup }
  { name: 'CacheTtlSeconds', value: string(cacheTtlSeconds) }
]

// Write-behind on Event Hubs. The namespace setting is what switches the handler to Event Hubs;
// the same EventHubConnection__* settings serve the EventHubConsumer trigger.
var eventHubsAppSettings = [
  { name: 'EventHubConnection__fullyQualifiedNamespace', value: eventHubs!.outputs.fullyQualifiedNamespace }
  { name: 'EventHubConnection__credential', value: 'managedidentity' }
  { name: 'EventHubConnection__clientId', value: appIdentity.properties.clientId }
  // Standard tier takes events up to 1 MB; a write event is the value plus ~100 bytes.
  { name: 'MaxValueBytes', value: '1000000' }
]

// Write-behind on the Redis Stream. No EventHubConnection__* at all: the handler would switch to
// Event Hubs if it saw the namespace setting, and the disabled trigger never resolves its connection
// (that happens when its listener starts). Only %EventHubName% must resolve, which it does.
var redisStreamAppSettings = [
  { name: 'AzureWebJobs.EventHubConsumer.Disabled', value: 'true' }
]

var appSettings = concat(
  runtimeAppSettings,
  commonAppSettings,
  useEventHubs ? eventHubsAppSettings : redisStreamAppSettings
)

// ---------------------------------------------------------------------------------------------
// The function app
// ---------------------------------------------------------------------------------------------

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: 'func-${token}'
    planName: 'plan-${token}'
    location: location
    tags: allTags
    planSku: planSku
    planCapacity: planCapacity
    identityId: appIdentity.id
    appSettings: appSettings
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment)
// ---------------------------------------------------------------------------------------------

output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_DEFAULT_HOST_NAME string = functionApp.outputs.defaultHostName
output RESOURCE_GROUP string = resourceGroup().name
output REDIS_HOST_NAME string = redisHostName
output REDIS_PERSISTENCE_ENABLED bool = useManagedRedis
  ? redisManaged!.outputs.persistenceEnabled
  : redisClassic!.outputs.persistenceEnabled
output APP_IDENTITY_CLIENT_ID string = appIdentity.properties.clientId
output AZURE_LOCATION string = location
