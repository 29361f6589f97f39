//! nginx's configuration syntax: directives of words ending in `;`, blocks in `{ }`, `#`
//! comments, quoted words with nginx's escapes, `include` followed (with `*` in the file name)
//! relative to the first file's directory, as nginx resolves them against its conf directory.
//! Errors name the file and line, as `nginx -t` does.

use std::fmt;
use std::path::{Path, PathBuf};

/// A file larger than this is not an nginx configuration; nor are files that come to more
/// than `TOTAL_MAX` together.
const FILE_MAX: u64 = 4 << 20;
const TOTAL_MAX: u64 = 16 << 20;
/// `include` depth, files in all, and block nesting: a cycle or a runaway glob ends here.
const INCLUDE_DEPTH: usize = 16;
const FILES_MAX: usize = 1000;
const NESTING_MAX: usize = 64;

/// One directive: its words, where it was written, and its block if it has one.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub at: Where,
    pub block: Option<Vec<Directive>>,
}

/// `file:line`, shown in every warning and error.
#[derive(Debug, Clone)]
pub struct Where {
    pub file: std::rc::Rc<str>,
    pub line: u32,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A file that cannot be read or parsed: `file:line: message`.
#[derive(Debug)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What has been read so far, against the bounds.
#[derive(Default)]
struct Read {
    files: usize,
    bytes: u64,
}

/// Read `path` and every file it includes.
pub fn read(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut read = Read::default();
    file(path, &base, 0, &mut Vec::new(), &mut read)
}

fn file(
    path: &Path,
    base: &Path,
    depth: usize,
    stack: &mut Vec<PathBuf>,
    read: &mut Read,
) -> Result<Vec<Directive>, ParseError> {
    let name: std::rc::Rc<str> = path.display().to_string().into();
    let left = TOTAL_MAX - read.bytes;
    let text = ringway_proxy::config::read_bounded(path, FILE_MAX.min(left)).map_err(|e| {
        if left < FILE_MAX {
            ParseError(format!(
                "{name}: {e}: with it the files included come to more than {} MiB",
                TOTAL_MAX >> 20
            ))
        } else {
            ParseError(format!("{name}: {e}"))
        }
    })?;
    read.files += 1;
    read.bytes += text.len() as u64;
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    stack.push(canon);
    let mut p = Parser {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        file: name,
    };
    let out = p.block(0, false)?;
    let out = expand(out, base, depth, stack, read)?;
    stack.pop();
    Ok(out)
}

/// Replace each `include` by the directives of the files it names, in name order.
fn expand(
    list: Vec<Directive>,
    base: &Path,
    depth: usize,
    stack: &mut Vec<PathBuf>,
    read: &mut Read,
) -> Result<Vec<Directive>, ParseError> {
    let mut out = Vec::with_capacity(list.len());
    for mut d in list {
        if d.name == "include" && d.block.is_none() {
            let [pattern] = d.args.as_slice() else {
                return Err(ParseError(format!(
                    "{}: include takes one file name or pattern",
                    d.at
                )));
            };
            if depth + 1 >= INCLUDE_DEPTH {
                return Err(ParseError(format!(
                    "{}: include nested deeper than {INCLUDE_DEPTH} files",
                    d.at
                )));
            }
            for path in glob(base, pattern).map_err(|e| ParseError(format!("{}: {e}", d.at)))? {
                let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                if stack.contains(&canon) {
                    return Err(ParseError(format!(
                        "{}: include of {} includes itself",
                        d.at,
                        path.display()
                    )));
                }
                if read.files >= FILES_MAX {
                    return Err(ParseError(format!(
                        "{}: more than {FILES_MAX} files included",
                        d.at
                    )));
                }
                out.extend(file(&path, base, depth + 1, stack, read)?);
            }
            continue;
        }
        if let Some(b) = d.block.take() {
            d.block = Some(expand(b, base, depth, stack, read)?);
        }
        out.push(d);
    }
    Ok(out)
}

/// The files an `include` names: a path (relative to `base`), `*` and `?` allowed in its last
/// component. A pattern matching nothing is no error (nginx); a plain path that is missing is.
fn glob(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        if !full.is_file() {
            return Err(format!("include {}: no such file", full.display()));
        }
        return Ok(vec![full]);
    }
    let dir = full.parent().unwrap_or(Path::new("."));
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "include {pattern}: wildcards only in the file name are supported"
        ));
    }
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter(|e| wild(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    Ok(out)
}

/// `*` any run, `?` one byte; hidden files only when the pattern starts with a dot (as glob(3)).
fn wild(p: &[u8], s: &[u8]) -> bool {
    if s.first() == Some(&b'.') && p.first() != Some(&b'.') {
        return false;
    }
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    line: u32,
    file: std::rc::Rc<str>,
}

enum Token {
    Word(String),
    Semi,
    Open,
    Close,
    Eof,
}

impl Parser<'_> {
    fn at(&self) -> Where {
        Where {
            file: self.file.clone(),
            line: self.line,
        }
    }

    fn err(&self, m: impl fmt::Display) -> ParseError {
        ParseError(format!("{}: {m}", self.at()))
    }

    /// Directives up to the `}` closing this block (or the end of the file at the top).
    fn block(&mut self, depth: usize, inner: bool) -> Result<Vec<Directive>, ParseError> {
        if depth > NESTING_MAX {
            return Err(self.err(format!("blocks nested deeper than {NESTING_MAX}")));
        }
        let mut out = Vec::new();
        loop {
            let at = self.skip_space();
            let first = self.token()?;
            let name = match first {
                Token::Eof if inner => {
                    return Err(self.err("unexpected end of file, expecting \"}\""));
                }
                Token::Eof => return Ok(out),
                Token::Close if inner => return Ok(out),
                Token::Close => return Err(self.err("unexpected \"}\"")),
                Token::Semi => return Err(self.err("unexpected \";\"")),
                Token::Open => return Err(self.err("unexpected \"{\"")),
                Token::Word(w) => w,
            };
            let mut args = Vec::new();
            loop {
                self.skip_space();
                match self.token()? {
                    Token::Word(w) => args.push(w),
                    Token::Semi => {
                        out.push(Directive {
                            name,
                            args,
                            at,
                            block: None,
                        });
                        break;
                    }
                    Token::Open => {
                        let block = self.block(depth + 1, true)?;
                        out.push(Directive {
                            name,
                            args,
                            at,
                            block: Some(block),
                        });
                        break;
                    }
                    Token::Close => {
                        return Err(self.err(format!(
                            "unexpected \"}}\": directive \"{name}\" is not terminated by \";\""
                        )));
                    }
                    Token::Eof => {
                        return Err(self.err(format!(
                            "unexpected end of file: directive \"{name}\" is not terminated by \";\""
                        )));
                    }
                }
            }
        }
    }

    /// Skip blanks, newlines and comments; the position of what follows.
    fn skip_space(&mut self) -> Where {
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\n' => {
                    self.line += 1;
                    self.i += 1;
                }
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'#' => {
                    while self.i < self.b.len() && self.b[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
        self.at()
    }

    fn token(&mut self) -> Result<Token, ParseError> {
        let Some(&c) = self.b.get(self.i) else {
            return Ok(Token::Eof);
        };
        match c {
            b';' => {
                self.i += 1;
                Ok(Token::Semi)
            }
            b'{' => {
                self.i += 1;
                Ok(Token::Open)
            }
            b'}' => {
                self.i += 1;
                Ok(Token::Close)
            }
            b'"' | b'\'' => self.quoted(c),
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' => break,
                        // `${name}` stays one word with its braces.
                        b'$' if self.b.get(self.i + 1) == Some(&b'{') => {
                            match self.b[self.i..].iter().position(|&c| c == b'}') {
                                Some(n) => self.i += n + 1,
                                None => return Err(self.err("unterminated \"${\"")),
                            }
                        }
                        b'\\' if self.i + 1 < self.b.len() => self.i += 2,
                        _ => self.i += 1,
                    }
                }
                Ok(Token::Word(
                    String::from_utf8_lossy(&self.b[start..self.i]).into_owned(),
                ))
            }
        }
    }

    /// A quoted word: `\"`, `\'`, `\\`, `\t`, `\r`, `\n` as nginx reads them; newlines inside
    /// are part of the word.
    fn quoted(&mut self, q: u8) -> Result<Token, ParseError> {
        let start_line = self.line;
        self.i += 1;
        let mut w = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(ParseError(format!(
                    "{}:{start_line}: unterminated quoted string",
                    self.file
                )));
            };
            self.i += 1;
            match c {
                b'\\' => {
                    let n = self.b.get(self.i).copied().unwrap_or(b'\\');
                    self.i += 1;
                    match n {
                        b'"' | b'\'' | b'\\' => w.push(n),
                        b't' => w.push(b'\t'),
                        b'r' => w.push(b'\r'),
                        b'n' => w.push(b'\n'),
                        _ => {
                            w.push(b'\\');
                            w.push(n);
                        }
                    }
                    if n == b'\n' {
                        self.line += 1;
                    }
                }
                b'\n' => {
                    self.line += 1;
                    w.push(c);
                }
                _ if c == q => break,
                _ => w.push(c),
            }
        }
        // nginx wants a separator after a quoted word (or the `)` of an `if (…)`).
        if let Some(&c) = self.b.get(self.i)
            && !matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' | b')')
        {
            return Err(self.err(format!(
                "unexpected \"{}\" after a quoted string",
                c as char
            )));
        }
        Ok(Token::Word(String::from_utf8_lossy(&w).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Directive>, ParseError> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
            line: 1,
            file: "t.conf".into(),
        };
        p.block(0, false)
    }

    #[test]
    fn words_blocks_comments_and_quotes() {
        let d = parse(
            "http { # c\n  map $http_upgrade $c { default upgrade; '' close; }\n  x \"a;b\" 'c\\'d' \"e\nf\";\n}\n",
        )
        .unwrap();
        assert_eq!(d[0].name, "http");
        let b = d[0].block.as_ref().unwrap();
        assert_eq!(b[0].args, ["$http_upgrade", "$c"]);
        let m = b[0].block.as_ref().unwrap();
        assert_eq!(m[1].name, "");
        assert_eq!(m[1].args, ["close"]);
        assert_eq!(b[1].args, ["a;b", "c'd", "e\nf"]);
        assert_eq!(b[1].at.line, 3);
    }

    #[test]
    fn malformed_files_name_the_line() {
        for (text, want) in [
            (
                "http {\n  server {\n",
                "t.conf:3: unexpected end of file, expecting \"}\"",
            ),
            ("a b;\n}\n", "t.conf:2: unexpected \"}\""),
            (
                "a b\n",
                "t.conf:2: unexpected end of file: directive \"a\" is not terminated",
            ),
            (
                "x {\n a b\n}\n",
                "t.conf:3: unexpected \"}\": directive \"a\"",
            ),
            ("a \"b;\n\n", "t.conf:1: unterminated quoted string"),
            (
                "a \"b\"c;\n",
                "t.conf:1: unexpected \"c\" after a quoted string",
            ),
            ("\n;\n", "t.conf:2: unexpected \";\""),
        ] {
            let e = parse(text).unwrap_err().0;
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let deep = "a {".repeat(100);
        assert!(parse(&deep).unwrap_err().0.contains("nested deeper"));
    }

    #[test]
    fn wildcards() {
        assert!(wild(b"*.conf", b"ws.conf"));
        assert!(!wild(b"*.conf", b"ws.conf~"));
        assert!(!wild(b"*.conf", b".hidden.conf"));
        assert!(wild(b"a?c*", b"abcdef"));
    }
}
