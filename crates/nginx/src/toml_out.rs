//! The TOML the importer writes: tables of `key = value  # where it came from`, values inline.

use std::fmt;

/// A TOML value, written inline.
#[derive(Clone, Debug)]
pub enum V {
    S(String),
    I(i64),
    B(bool),
    L(Vec<V>),
    T(Vec<(String, V)>),
}

impl fmt::Display for V {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V::S(s) => {
                // A basic string on one line: control characters as escapes.
                f.write_str("\"")?;
                for c in s.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\r' => f.write_str("\\r")?,
                        '\t' => f.write_str("\\t")?,
                        c if c.is_control() => write!(f, "\\u{:04X}", c as u32)?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            V::I(n) => write!(f, "{n}"),
            V::B(b) => write!(f, "{b}"),
            V::L(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            V::T(t) => {
                f.write_str("{ ")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} = {v}")?;
                }
                f.write_str(" }")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub val: V,
    pub note: String,
}

impl Row {
    pub fn new(key: &str, val: V, note: impl Into<String>) -> Row {
        Row {
            key: key.into(),
            val,
            note: note.into(),
        }
    }
}

/// Rows in the order they were set (a key set again keeps its place), then comment lines.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub rows: Vec<Row>,
    pub comments: Vec<String>,
}

impl Table {
    pub fn set(&mut self, key: &str, val: V, note: impl Into<String>) {
        let row = Row::new(key, val, note);
        match self.rows.iter_mut().find(|r| r.key == key) {
            Some(r) => *r = row,
            None => self.rows.push(row),
        }
    }

    /// `key` from a directive's value (`f` makes it a TOML value) and where the directive was
    /// written, when it was.
    pub fn set_from<T: Copy, W: fmt::Display>(
        &mut self,
        key: &str,
        from: &Option<(T, W)>,
        directive: &str,
        f: impl FnOnce(T) -> V,
    ) {
        if let Some((v, at)) = from {
            self.set(key, f(*v), format!("{at}: {directive}"));
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.rows.iter().find(|r| r.key == key).map(|r| &r.val)
    }

    /// The rows as an inline table (their notes are dropped).
    pub fn inline(self) -> V {
        V::T(self.rows.into_iter().map(|r| (r.key, r.val)).collect())
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        for r in &self.rows {
            let line = format!("{} = {}", r.key, r.val);
            if r.note.is_empty() {
                o.push_str(&line);
            } else {
                o.push_str(&format!("{line:<31} # {}", comment(&r.note)));
            }
            o.push('\n');
        }
        for c in &self.comments {
            for l in c.split('\n') {
                o.push_str(&format!("# {}\n", comment(l.trim_start_matches("# "))));
            }
        }
        o
    }
}

/// Text fit for a TOML comment (one line, no control characters but tab): what nginx files
/// may hold in a word (a stray NUL, a newline inside quotes) shown escaped.
pub fn comment(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push(' '),
            c if c.is_control() => o.push_str(&format!("\\u{{{:04X}}}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::V;

    #[test]
    fn strings_are_one_line_and_read_back() {
        let s = "GET /health HTTP/1.0\r\n\r\n \"q\" \\ \t \u{1}";
        let text = format!("a = {}", V::S(s.into()));
        assert!(!text.contains('\n'));
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back["a"].as_str(), Some(s));
    }
}
