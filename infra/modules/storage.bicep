// The Functions host storage account (AzureWebJobsStorage), reached with the app's managed identity
// only: shared keys are disabled. That is possible because the Dedicated plans the template offers
// need no Azure Files content share; Elastic Premium and Linux Consumption do, and the content share
// (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING) only takes a connection string with a key.

@description('Storage account name (3-24 lowercase letters and digits).')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Principal (object) id of the app identity.')
param principalId string

// What the host does with each service, and the built-in role that allows it:
var roles = [
  // Blob: function keys (azure-webjobs-secrets), timer schedule monitors (useMonitor), singleton and
  // listener leases, and the Event Hubs trigger's checkpoints and partition ownership. Owner, not
  // Contributor, because the host manages blob leases and containers.
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  // Queue: host-internal queues (blob trigger receipts/poison queues); cheap insurance for the host.
  '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  // Table: host diagnostic events and any table-backed host state.
  '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
]

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // No keys: every client (host, deployment, Redis persistence) authenticates with Entra ID.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource roleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
    name: guid(account.id, principalId, role)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
