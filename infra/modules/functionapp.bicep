// The hosting plan and the Linux function app that runs `handler` as a custom handler.
//
// Dedicated (B*/S*/P*v3): custom handlers are supported, no Azure Files content share is needed (so
// the host storage account can refuse shared keys), and Always On keeps one process alive, which the
// in-process Redis Stream consumer (write-behind) and the refresh-ahead timer want. The runtime is
// chosen by FUNCTIONS_WORKER_RUNTIME=custom with an empty linuxFxVersion, which is what the Functions
// stacks API (and `az functionapp create --runtime custom`) use.

@description('Function app name (globally unique).')
param name string

@description('Hosting plan name.')
param planName string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Plan SKU: a Dedicated (App Service plan) SKU.')
param planSku string

@description('Instance count.')
param planCapacity int

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('App settings as [{ name, value }].')
param appSettings array

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'linux'
  sku: {
    name: planSku
    capacity: planCapacity
  }
  properties: {
    // Linux.
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  // azd finds the app to deploy the `api` service to by this tag.
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    reserved: true
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      appSettings: appSettings
      // Keep the host and the handler running (Redis Stream consumer, timer).
      alwaysOn: true
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      http20Enabled: true
      // Custom handler: no language image to pick (empty, as the stacks API says).
      linuxFxVersion: ''
    }
  }
}

// No publishing passwords: deploy with an Entra ID token (azd, az CLI and Core Tools do).
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
