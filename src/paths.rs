//! Where suggestive keeps things: the `directories` crate's per-user folders, each overridable
//! by an environment variable (tests and shared servers use these).

use std::path::PathBuf;

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "suggestive")
}

fn from_env_or(var: &str, pick: impl FnOnce(&directories::ProjectDirs) -> PathBuf) -> PathBuf {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    project()
        .map(|p| pick(&p))
        .unwrap_or_else(|| std::env::temp_dir().join("suggestive"))
}

/// Caches of preprocessed data sets: `$SUGGESTIVE_CACHE_DIR` or `~/.cache/suggestive/datasets`.
pub fn dataset_cache_root() -> PathBuf {
    from_env_or("SUGGESTIVE_CACHE_DIR", |p| p.cache_dir().join("datasets"))
}

/// The user's settings (themes, the Slurm template): `$SUGGESTIVE_CONFIG_DIR` or
/// `~/.config/suggestive`.
pub fn config_dir() -> PathBuf {
    from_env_or("SUGGESTIVE_CONFIG_DIR", |p| p.config_dir().to_path_buf())
}

/// Generated data (the demo phantom): `$SUGGESTIVE_DATA_DIR` or `~/.local/share/suggestive`.
pub fn data_dir() -> PathBuf {
    from_env_or("SUGGESTIVE_DATA_DIR", |p| p.data_dir().to_path_buf())
}
