// Log Analytics + workspace-based Application Insights, with local (instrumentation-key) auth off.
// With DisableLocalAuth the Functions host must send telemetry with an Entra ID token: the app
// setting APPLICATIONINSIGHTS_AUTHENTICATION_STRING names the identity, and that identity needs
// "Monitoring Metrics Publisher" on this component (assigned below).

@description('Region.')
param location string

@description('Tags for every resource.')
param tags object

@description('Log Analytics workspace name.')
param logAnalyticsName string

@description('Application Insights component name.')
param appInsightsName string

@description('Principal (object) id of the app identity that sends telemetry.')
param principalId string

// Monitoring Metrics Publisher: lets the identity ingest telemetry when local auth is disabled.
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // No instrumentation-key ingestion: only Entra ID authenticated telemetry is accepted.
    DisableLocalAuth: true
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

@description('Connection string (holds the ingestion endpoint and the instrumentation key, which is not a credential once local auth is off).')
output connectionString string = appInsights.properties.ConnectionString

output appInsightsName string = appInsights.name
