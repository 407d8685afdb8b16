use std::fmt;

use serde::{Deserialize, Serialize};

use super::DataError;

/// One MRI sequence of a BraTS case; the order here is the channel order of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Flair,
    T1,
    T1ce,
    T2,
}

impl Modality {
    pub const ALL: [Modality; 4] = [Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2];

    /// The file-name suffix BraTS uses: `<ID>_<suffix>.nii.gz`.
    pub fn suffix(self) -> &'static str {
        match self {
            Modality::Flair => "flair",
            Modality::T1 => "t1",
            Modality::T1ce => "t1ce",
            Modality::T2 => "t2",
        }
    }

    pub fn parse(s: &str) -> Option<Modality> {
        Modality::ALL
            .into_iter()
            .find(|m| m.suffix().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Parses `flair,t1,t1ce,t2` (any order, no repeats) into the canonical channel order given.
pub fn parse_modalities(list: &str) -> Result<Vec<Modality>, DataError> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let m = Modality::parse(part).ok_or_else(|| {
            DataError::Config(format!(
                "unknown modality '{}' (expected some of flair,t1,t1ce,t2)",
                part.trim()
            ))
        })?;
        if out.contains(&m) {
            return Err(DataError::Config(format!("modality '{m}' given twice")));
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err(DataError::Config("no modality given".into()));
    }
    Ok(out)
}
