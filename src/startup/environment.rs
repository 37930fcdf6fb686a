//! Where the handler runs.

use std::path::PathBuf;

/// Where the handler runs.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// On Azure App Service / Functions (`WEBSITE_INSTANCE_ID` is set): the app root is read-only,
    /// and an exiting handler takes every function down, so misconfiguration must not stop it.
    pub on_azure: bool,
    /// The function app's root (`FUNCTIONS_APP_ROOT_PATH`, else the working directory).
    pub app_root: PathBuf,
}

impl Environment {
    /// Reads the environment the host gives the handler.
    pub fn from_env() -> Self {
        let on_azure = std::env::var("WEBSITE_INSTANCE_ID").is_ok_and(|v| !v.trim().is_empty());
        let app_root = std::env::var("FUNCTIONS_APP_ROOT_PATH")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        Self { on_azure, app_root }
    }
}
