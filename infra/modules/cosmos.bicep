// Azure Cosmos DB for NoSQL, Entra ID only (disableLocalAuth), with the database and container the
// handler expects, and the lease container of the StoreChanges trigger. Neither the handler nor the
// trigger can create them: with Entra ID, Cosmos DB refuses database and container creation through
// the data plane, so they must exist before the app starts.

@description('Account name (3-44 lowercase letters, digits, hyphens).')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Database id (CosmosDBDatabase).')
param databaseName string

@description('Container id (CosmosDBContainer).')
param containerName string

@description('Serverless capacity (pay per request). false: provisioned autoscale up to 1000 RU/s on the container.')
param serverless bool

@description('Principal (object) id of the app identity.')
param principalId string

// "Cosmos DB Built-in Data Contributor": read and write items and read metadata. This is a Cosmos DB
// data-plane (SQL) role, assigned with sqlRoleAssignments, not an Azure RBAC role.
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: name
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: serverless
      ? [
          {
            name: 'EnableServerless'
          }
        ]
      : []
    // No account keys: data access only with Entra ID and the SQL role below.
    disableLocalAuth: true
    // Databases and containers change only through Azure Resource Manager (this template).
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

resource container 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: containerName
  properties: {
    resource: {
      id: containerName
      // The handler stores one item per key with id = the key's item id and requires /id.
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
      // TTL on, but nothing expires by default (-1): items (never tombstones) can carry their own
      // `ttl` later.
      defaultTtl: -1
    }
    options: serverless
      ? {}
      : {
          autoscaleSettings: {
            maxThroughput: 1000
          }
        }
  }
}

// The leases of the StoreChanges trigger (its change feed checkpoints, one item per partition
// range). The trigger's createLeaseContainerIfNotExists cannot create it here: with Entra ID the data
// plane creates no containers. The Cosmos DB extension requires partition key /id.
resource leases 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'leases'
  properties: {
    resource: {
      id: 'leases'
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
    }
    options: serverless
      ? {}
      : {
          autoscaleSettings: {
            maxThroughput: 1000
          }
        }
  }
}

resource appData 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: account
  name: guid(account.id, principalId, cosmosDataContributor)
  properties: {
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${cosmosDataContributor}'
    principalId: principalId
    scope: account.id
  }
}

@description('https://<account>.documents.azure.com:443/ (CosmosDBConnection__accountEndpoint).')
output endpoint string = account.properties.documentEndpoint
