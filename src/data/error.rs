use std::path::PathBuf;

/// Everything that can go wrong reading a data set. Messages name the patient and file so that a
/// researcher can find the broken case among hundreds.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Config(String),
    #[error("{}: {msg}", path.display())]
    Folder { path: PathBuf, msg: String },
    #[error("patient {patient}: {}: {msg}", file.display())]
    File {
        patient: String,
        file: PathBuf,
        msg: String,
    },
    #[error("patient {patient}: {msg}")]
    Patient { patient: String, msg: String },
    #[error("cache {}: {msg}", path.display())]
    Cache { path: PathBuf, msg: String },
}

impl DataError {
    pub fn file(patient: &str, file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::File {
            patient: patient.to_string(),
            file: file.into(),
            msg: msg.into(),
        }
    }

    pub fn cache(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        DataError::Cache {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
