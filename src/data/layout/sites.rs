//! A sites file: the acquisition site of each case, for data sets whose IDs carry none (BraTS
//! 2021, 2023, the Decathlon). CSV with two columns, case ID and site; an optional header row
//! whose second column is `site`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::DataError;

pub(super) fn read_sites(path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    let err = |msg: String| DataError::Folder {
        path: path.to_path_buf(),
        msg,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|e| err(format!("cannot read the sites file: {e}")))?;
    let mut sites = BTreeMap::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(format!("cannot read: {e}")))?;
        let line = record.position().map_or(n as u64 + 1, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let (Some(case), Some(site)) = (record.get(0), record.get(1)) else {
            return Err(err(format!(
                "line {line} has one column; each row is `case ID,site`"
            )));
        };
        let case = case.trim_start_matches('\u{feff}');
        if n == 0 && site.eq_ignore_ascii_case("site") {
            continue;
        }
        if case.is_empty() || site.is_empty() {
            return Err(err(format!(
                "line {line}: an empty case ID or site ('{}', '{}')",
                crate::untrusted::escaped(case),
                crate::untrusted::escaped(site)
            )));
        }
        // Sites name the transfer scenario's groups on the terminal and in reports.
        crate::untrusted::check_name("site", site)
            .map_err(|msg| err(format!("line {line}: {msg}")))?;
        if let Some(before) = sites.insert(case.to_string(), site.to_string()) {
            if before != site {
                return Err(err(format!(
                    "case {case} is listed twice, with sites {before} and {site}"
                )));
            }
        }
    }
    if sites.is_empty() {
        return Err(err("lists no case; each row is `case ID,site`".into()));
    }
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<BTreeMap<String, String>, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.csv");
        std::fs::write(&path, text).unwrap();
        read_sites(&path)
    }

    #[test]
    fn rows_with_and_without_a_header() {
        let s = read("case,site\nA,CBICA\n\"B,1\",TCIA\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s["B,1"], "TCIA");
        let s = read("A, CBICA\n").unwrap();
        assert_eq!(s["A"], "CBICA");
    }

    #[test]
    fn bad_rows_are_refused_by_line() {
        let e = read("A,CBICA\nB\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("sites.csv"), "{e}");
        let e = read("A,CBICA\nA,TCIA\n").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = read("case,site\n").unwrap_err().to_string();
        assert!(e.contains("lists no case"), "{e}");
    }
}
