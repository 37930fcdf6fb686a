// Event Hubs for the write-behind queue (writeBehindQueue = 'eventHubs'): the handler sends each write
// event itself (partition key = cache key), and the EventHubConsumer function's trigger drains it.
// Local (SAS) auth is off; the app identity gets Data Sender (handler) and Data Receiver (trigger).

@description('Namespace name.')
param namespaceName string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Event hub name (EventHubName).')
param eventHubName string

@description('Consumer group for the EventHubConsumer trigger (besides $Default, which always exists).')
param consumerGroupName string

@description('Partitions: how many EventHubConsumer invocations can run in parallel.')
@minValue(1)
@maxValue(32)
param partitionCount int

@description('Principal (object) id of the app identity.')
param principalId string

var roles = [
  // The handler publishes write events (and reads the hub's properties for Health).
  '2b629674-e913-4c01-ae53-ef4638d8f975' // Azure Event Hubs Data Sender
  // The Functions host's Event Hubs trigger reads them (with the same identity, EventHubConnection).
  'a638d3c7-ab3a-418d-83e6-5f17a39d4fde' // Azure Event Hubs Data Receiver
]

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  // Standard: 1 MB events (Basic allows 256 KB) and more than one consumer group.
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    // No SAS keys: Entra ID only (the handler's Event Hubs client cannot use SAS anyway).
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: 1
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
}

// Scoped to the one event hub, not the namespace.
resource roleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
    name: guid(hub.id, principalId, role)
    scope: hub
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

@description('Bare host name, e.g. myns.servicebus.windows.net (EventHubConnection__fullyQualifiedNamespace).')
output fullyQualifiedNamespace string = split(split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0], '/')[0]

output eventHubName string = hub.name
