// The hosting plan and the Linux function app that runs `handler` as a custom handler.
//
// Dedicated (B*/S*/P*v3, the default family): custom handlers are supported, no Azure Files content
// share is needed (so the host storage account can refuse shared keys), and Always On keeps one
// process alive, which the in-process Redis Stream consumer (write-behind) and the refresh-ahead
// timer want. The runtime is chosen by FUNCTIONS_WORKER_RUNTIME=custom with an empty linuxFxVersion,
// which is what the Functions stacks API (and `az functionapp create --runtime custom`) use.
//
// Flex Consumption (FC1): also keyless (deployment package in a blob container read with the
// managed identity), scales to zero, but the runtime is declared in functionAppConfig and the
// FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION / WEBSITE_RUN_FROM_PACKAGE app settings are
// not allowed (main.bicep leaves them out for FC1).

@description('Function app name (globally unique).')
param name string

@description('Hosting plan name.')
param planName string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Plan SKU: a Dedicated SKU or FC1 (Flex Consumption).')
param planSku string

@description('Dedicated plan instance count (ignored on FC1).')
param planCapacity int

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('App settings as [{ name, value }].')
param appSettings array

@description('Flex Consumption: blob endpoint of the storage account holding the deployment container.')
param storageBlobEndpoint string

@description('Flex Consumption: deployment container name.')
param deploymentContainerName string

@description('Flex Consumption: maximum instances (40-1000).')
param flexMaximumInstanceCount int

@description('Flex Consumption: instance memory in MB.')
param flexInstanceMemoryMB int

var isFlex = planSku == 'FC1'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'linux'
  sku: isFlex
    ? {
        name: 'FC1'
        tier: 'FlexConsumption'
      }
    : {
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
    siteConfig: union(
      {
        appSettings: appSettings
        // Keep the host and the handler running (Redis Stream consumer, timer) on Dedicated plans.
        alwaysOn: !isFlex
        ftpsState: 'Disabled'
        minTlsVersion: '1.2'
        http20Enabled: true
      },
      // Custom handler on Dedicated: no language image to pick (empty, as the stacks API says).
      // Flex Consumption takes no linuxFxVersion at all.
      isFlex ? {} : { linuxFxVersion: '' }
    )
    functionAppConfig: isFlex
      ? {
          runtime: {
            name: 'custom'
            version: '1.0'
          }
          deployment: {
            storage: {
              type: 'blobContainer'
              value: '${storageBlobEndpoint}${deploymentContainerName}'
              authentication: {
                type: 'UserAssignedIdentity'
                userAssignedIdentityResourceId: identityId
              }
            }
          }
          scaleAndConcurrency: {
            maximumInstanceCount: flexMaximumInstanceCount
            instanceMemoryMB: flexInstanceMemoryMB
          }
        }
      : null
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
