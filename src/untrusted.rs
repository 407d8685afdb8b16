//! Text we do not control (data sets, annotators' files, session names, command-line values) on
//! its way into file names, the scripts we write and the terminal: one checked rule for each.
//!
//! - A name that becomes a file name or a script word is checked where it enters
//!   ([`check_name`]).
//! - A value in a shell script is one single-quoted word ([`shell_quote`]); in a comment line,
//!   its control characters are escaped ([`escaped`]).
//! - A value in an `#SBATCH` line is one word of sbatch's own parser ([`sbatch_word`]).
//! - A Python string in a script is a literal with every odd character escaped
//!   ([`python_string`]).
//! - Text shown in a terminal has its control characters escaped ([`escaped`]).

use std::borrow::Cow;

/// `text` with every control character (newline, escape, DEL, the C1 range) written as a
/// Rust-style escape (`\n`, `\u{1b}`), so it can neither end a line of a script nor drive a
/// terminal. Other text comes back as it was.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Why `value`, a `what` (e.g. "session name", "case ID"), cannot become a file name or a
/// script word: empty, `.` or `..`, a control character (newline included), or a path
/// separator. The message shows the value escaped.
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
    let why = if value.is_empty() {
        "is empty"
    } else if value == "." || value == ".." {
        "is not a name"
    } else if value.chars().any(char::is_control) {
        "holds a control character (a newline, a tab, an escape, …)"
    } else if value.contains(['/', '\\']) {
        "holds a path separator (/ or \\)"
    } else {
        return Ok(());
    };
    Err(format!("{what} \"{}\" {why}", escaped(value)))
}

/// `text` as one shell word: in single quotes, each `'` written as `'\''`. Any text is safe in
/// it, newlines included, but only on a line that is code: a comment line takes [`escaped`]
/// text.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `value` as one word of an `#SBATCH` line, as sbatch splits those lines itself (at
/// whitespace outside double quotes, and at `#`): in double quotes when it holds whitespace or
/// `#`. A value with a control character could end the line and start a shell command, and
/// one with `"` or `\` would depend on sbatch's unquoting: both are refused, naming `what`.
pub fn sbatch_word(what: &str, value: &str) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{what} \"{}\" holds a control character (a newline, a tab, an escape, …), which an #SBATCH line cannot take",
            escaped(value)
        ));
    }
    if value.contains(['"', '\\']) {
        return Err(format!(
            "{what} \"{value}\" holds a \" or a \\, which an #SBATCH line cannot take"
        ));
    }
    Ok(if value.contains(|c: char| c.is_whitespace() || c == '#') {
        format!("\"{value}\"")
    } else {
        value.to_string()
    })
}

/// `text` as a Python string literal in single quotes: `\` and `'` escaped, and every
/// character outside printable ASCII written as `\xNN`, `\uNNNN` or `\UNNNNNNNN`, so the
/// literal is one line of plain ASCII that a shell single-quoted word can carry only after
/// [`shell_quote`] (which handles its `'`).
pub fn python_string(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\'' => out.push_str(r"\'"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Texts that break naive quoting: quotes, newlines, `$()`, backticks, `;`, escapes, and
    /// text that is not ASCII.
    const HOSTILE: [&str; 9] = [
        "plain",
        "a b'c",
        "x\ntouch /tmp/owned",
        "$(touch owned)`touch owned`",
        "a;b|c&d>e",
        "'\"'\"'",
        "esc \u{1b}]0;title\u{7}",
        "Ünïcødé – 🧠",
        "back\\slash\\'",
    ];

    #[test]
    fn a_shell_word_comes_back_unchanged_through_a_real_shell() {
        for text in HOSTILE {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(text)))
                .output()
                .unwrap();
            assert!(out.status.success(), "{text:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        }
    }

    #[test]
    fn a_python_literal_is_one_ascii_line_that_python_reads_back() {
        for text in HOSTILE {
            let lit = python_string(text);
            assert!(lit.is_ascii() && !lit.contains('\n'), "{lit}");
            let Ok(out) = Command::new("python3")
                .arg("-c")
                .arg(format!("import sys; sys.stdout.write({lit})"))
                .output()
            else {
                eprintln!("python3 not found: only the shape of the literal was checked");
                return;
            };
            assert!(out.status.success(), "{lit}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text, "{lit}");
        }
    }

    #[test]
    fn escaped_text_holds_no_control_character() {
        for text in HOSTILE {
            let e = escaped(text);
            assert!(!e.chars().any(char::is_control), "{e}");
        }
        assert_eq!(escaped("a\nb\u{1b}[2J"), r"a\nb\u{1b}[2J");
        assert!(matches!(escaped("plain – ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn names_with_control_characters_or_separators_are_refused_by_value() {
        assert!(check_name("case ID", "BraTS20_Training_001").is_ok());
        assert!(check_name("session name", "my study (v2)").is_ok());
        for (bad, why) in [
            ("", "is empty"),
            ("..", "is not a name"),
            ("a\nrm -rf ~", "control character"),
            ("a\tb", "control character"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
        ] {
            let e = check_name("case ID", bad).unwrap_err();
            assert!(e.starts_with("case ID \"") && e.contains(why), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn sbatch_words_are_quoted_or_refused() {
        assert_eq!(sbatch_word("v", "gpu").unwrap(), "gpu");
        assert_eq!(
            sbatch_word("v", "--output=/a b/%a.out").unwrap(),
            "\"--output=/a b/%a.out\""
        );
        assert_eq!(sbatch_word("v", "a#b").unwrap(), "\"a#b\"");
        let e = sbatch_word("--partition", "gpu\ntouch owned").unwrap_err();
        assert!(e.contains("--partition \"gpu\\ntouch owned\""), "{e}");
        assert!(sbatch_word("v", "a\"b").is_err());
        assert!(sbatch_word("v", "a\\b").is_err());
    }
}
