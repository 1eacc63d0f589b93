//! A `targets.conf` reader with the semantics tgt-admin gets from Perl's
//! Config::General (`-UseApacheInclude`, `-IncludeDirectories`,
//! `-IncludeGlob`, `-MergeDuplicateBlocks`, everything else default), so
//! that a file means the same thing to `rtgt-admin` as to `tgt-admin`:
//!
//! - `key value`, `key = value`; the key ends at the first `=` or blank.
//! - A value wholly in double quotes loses them; `\$ \\ \" \#` unescape.
//! - `#` starts a comment unless escaped; `/* ... */` comments; a trailing
//!   `\` joins the next line.
//! - A repeated key becomes a list, in file order.
//! - `<name arg>` ... `</name>` is a block stored under `name`, then `arg`;
//!   a repeated block merges into the first.
//! - `include PATH` / `includeoptional PATH` (any case): a glob (sorted
//!   matches, none is fine), a directory (its files in byte order) or a
//!   file; a relative path is tried from the working directory, then from
//!   the main file's directory.
//!
//! Every scalar remembers its file and line, so errors can name them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loc {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number (of the first physical line of a joined line).
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A configuration value, shaped like the Perl structure tgt-admin walks.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `key value` (`None`: the key had no value, Perl's undef).
    Scalar(Option<String>, Loc),
    /// A key given more than once.
    List(Vec<Value>),
    /// A block's contents.
    Block(Block),
}

/// A block (or the whole file): keys in byte order, as Perl's `sort keys`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// The entries.
    pub entries: BTreeMap<String, Value>,
    /// Where the block (first) started.
    pub loc: Loc,
}

impl Value {
    /// The string of a scalar with a value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Scalar(Some(s), _) => Some(s),
            _ => None,
        }
    }

    /// Perl's `length $v`: true for a non-empty string, a list or a block.
    pub fn has_length(&self) -> bool {
        match self {
            Value::Scalar(s, _) => s.as_deref().is_some_and(|s| !s.is_empty()),
            _ => true,
        }
    }

    /// Whether this is a list or a block (Perl `ref`).
    pub fn is_ref(&self) -> bool {
        !matches!(self, Value::Scalar(..))
    }

    /// Where the value was written (a list: its first element).
    pub fn loc(&self) -> Loc {
        match self {
            Value::Scalar(_, l) => l.clone(),
            Value::List(v) => v.first().map(Value::loc).unwrap_or_default(),
            Value::Block(b) => b.loc.clone(),
        }
    }

    /// The elements: a list's, or the value itself.
    pub fn items(&self) -> Vec<&Value> {
        match self {
            Value::List(v) => v.iter().collect(),
            o => vec![o],
        }
    }
}

impl Block {
    /// An entry.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.entries.get(k)
    }

    /// A scalar entry's string.
    pub fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Value::as_str)
    }
}

/// A configuration error, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    /// Where.
    pub loc: Loc,
    /// What.
    pub msg: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.msg)
    }
}

impl std::error::Error for ConfError {}

fn err<T>(loc: &Loc, msg: impl Into<String>) -> Result<T, ConfError> {
    Err(ConfError {
        loc: loc.clone(),
        msg: msg.into(),
    })
}

/// Read and parse a configuration file and its includes.
pub fn parse_file(path: &Path) -> Result<Block, ConfError> {
    let mut r = Reader {
        lines: Vec::new(),
        base_dir: if path.is_absolute() {
            path.parent().map(Path::to_path_buf)
        } else {
            None
        },
        seen: Vec::new(),
    };
    let top = Loc {
        file: path.to_path_buf(),
        line: 0,
    };
    r.open(path, &top)?;
    let mut root = Block {
        entries: BTreeMap::new(),
        loc: top,
    };
    parse_lines(&mut root, &r.lines, 0)?;
    Ok(root)
}

/// Parse configuration text (includes are resolved from the working
/// directory); `name` labels error locations.
pub fn parse_str(text: &str, name: &str) -> Result<Block, ConfError> {
    let mut r = Reader {
        lines: Vec::new(),
        base_dir: None,
        seen: Vec::new(),
    };
    r.read(text, Path::new(name))?;
    let mut root = Block {
        entries: BTreeMap::new(),
        loc: Loc {
            file: name.into(),
            line: 0,
        },
    };
    parse_lines(&mut root, &r.lines, 0)?;
    Ok(root)
}

struct Reader {
    lines: Vec<(String, Loc)>,
    base_dir: Option<PathBuf>,
    seen: Vec<PathBuf>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{', '\\'])
}

impl Reader {
    fn open(&mut self, path: &Path, from: &Loc) -> Result<(), ConfError> {
        let s = path.to_string_lossy().into_owned();
        if is_glob(&s) {
            let mut found = glob(&s);
            if found.is_empty() && !path.is_absolute() {
                if let Some(d) = &self.base_dir {
                    found = glob(&d.join(path).to_string_lossy());
                }
            }
            for f in found {
                self.open(&f, from)?;
            }
            return Ok(());
        }
        let mut p = path.to_path_buf();
        if !p.exists() {
            match &self.base_dir {
                Some(d) if !path.is_absolute() && d.join(path).exists() => p = d.join(path),
                _ => return err(from, format!("the file \"{s}\" does not exist")),
            }
        }
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| ConfError {
                    loc: from.clone(),
                    msg: format!("can't read directory {}: {e}", p.display()),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            for f in files {
                self.read_file(&f, from)?;
            }
            return Ok(());
        }
        self.read_file(&p, from)
    }

    fn read_file(&mut self, p: &Path, from: &Loc) -> Result<(), ConfError> {
        if self.seen.iter().any(|s| s == p) {
            // Config::General reads a file once (it warns and goes on).
            return Ok(());
        }
        self.seen.push(p.to_path_buf());
        let bytes = std::fs::read(p).map_err(|e| ConfError {
            loc: from.clone(),
            msg: format!("could not open {}: {e}", p.display()),
        })?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.read(&text, p)
    }

    /// Config::General's `_read`: comments, joined lines, includes.
    fn read(&mut self, text: &str, file: &Path) -> Result<(), ConfError> {
        let mut c_comment = false;
        let mut long: Option<(String, Loc)> = None;
        let mut here: Option<(String, String, Loc, Vec<String>)> = None;
        for (i, raw) in text.lines().enumerate() {
            let loc = Loc {
                file: file.to_path_buf(),
                line: i + 1,
            };
            let mut l = raw.to_string();
            if let Some((key, end, hloc, body)) = &mut here {
                if l.trim() == end.as_str() {
                    let joined = format!("{key} {}", body.join("\n"));
                    self.lines.push((joined, hloc.clone()));
                    here = None;
                } else {
                    body.push(l);
                }
                continue;
            }
            // C comments.
            if let (Some(a), Some(b)) = (l.find("/*"), l.rfind("*/")) {
                if a < b {
                    let head = l[..a].trim_end().to_string();
                    let tail = l[b + 2..].trim_start().to_string();
                    l = head + &tail;
                }
            } else if l.trim_start().starts_with("/*") {
                c_comment = true;
            } else if let Some(b) = l.find("*/") {
                c_comment = false;
                l = l[b + 2..].to_string();
            }
            if c_comment {
                continue;
            }
            // '#' comments, unless escaped.
            if let Some(p) = unescaped_hash(&l) {
                l.truncate(p);
            }
            if l.ends_with('\\') && !l.ends_with("\\\\") {
                l.pop();
                let part = l.trim_start().to_string();
                match &mut long {
                    Some((s, _)) => s.push_str(&part),
                    None => long = Some((part, loc)),
                }
                continue;
            }
            // Explicit empty block `<name arg/>`.
            let t = l.trim();
            if t.starts_with('<') && t.ends_with("/>") && !t.starts_with("</") {
                let inner = &t[1..t.len() - 2];
                let name = inner.split_whitespace().next().unwrap_or("");
                self.lines.push((format!("<{inner}>"), loc.clone()));
                self.lines.push((format!("</{name}>"), loc));
                continue;
            }
            // Here-document `key <<EOF` (whitespace form).
            if long.is_none() {
                if let Some((k, rest)) = t.split_once("<<") {
                    let k = k.trim().trim_end_matches('=').trim();
                    let end = rest.trim();
                    if !k.is_empty() && !k.starts_with('<') && !end.is_empty() {
                        here = Some((k.to_string(), end.to_string(), loc, Vec::new()));
                        continue;
                    }
                }
            }
            if let Some((mut s, lloc)) = long.take() {
                s.push_str(l.trim_start());
                self.lines.push((s, lloc));
                continue;
            }
            if t.is_empty() {
                continue;
            }
            if let Some(inc) = include_target(t) {
                self.open(Path::new(&inc), &loc)?;
                continue;
            }
            self.lines.push((l, loc));
        }
        if c_comment {
            // Config::General silently ignores an unterminated comment.
        }
        if let Some((_, end, hloc, _)) = here {
            return err(&hloc, format!("here-document has no end marker \"{end}\""));
        }
        if let Some((s, lloc)) = long {
            self.lines.push((s, lloc));
        }
        Ok(())
    }
}

fn unescaped_hash(l: &str) -> Option<usize> {
    let b = l.as_bytes();
    (0..b.len()).find(|&i| b[i] == b'#' && (i == 0 || b[i - 1] != b'\\'))
}

/// `include PATH`, `include "PATH"`, `includeoptional PATH` (any case).
fn include_target(t: &str) -> Option<String> {
    let (word, rest) = match t.find(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        Some(p) => (&t[..p], t[p..].trim()),
        None => return None,
    };
    let lw = word.to_ascii_lowercase();
    if lw != "include" && lw != "includeoptional" {
        return None;
    }
    let mut f = rest.to_string();
    if f.len() >= 2
        && ((f.starts_with('"') && f.ends_with('"')) || (f.starts_with('\'') && f.ends_with('\'')))
    {
        f = f[1..f.len() - 1].to_string();
    }
    if f.is_empty() {
        return None;
    }
    if lw == "includeoptional" && !is_glob(&f) {
        // Config::General turns it into a glob matching just that file, so
        // a missing file is no error.
        let p = Path::new(&f);
        let name = p.file_name()?.to_string_lossy();
        let g: String = name.chars().map(|c| format!("[{c}]")).collect();
        return Some(match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => format!("{}/{g}", d.display()),
            _ => g,
        });
    }
    Some(f)
}

/// A small `glob(3)`: `*`, `?`, `[...]` and `{a,b}` per path component;
/// sorted, regular files only.
pub fn glob(pattern: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in expand_braces(pattern) {
        let abs = p.starts_with('/');
        let mut cur: Vec<PathBuf> = vec![if abs { "/".into() } else { PathBuf::new() }];
        for comp in p.split('/').filter(|c| !c.is_empty()) {
            let mut next = Vec::new();
            for base in &cur {
                if !comp.contains(['*', '?', '[', '\\']) {
                    next.push(base.join(comp));
                    continue;
                }
                let dir = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base.as_path()
                };
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.') || comp.starts_with('.'))
                    .filter(|n| wildmatch(comp.as_bytes(), n.as_bytes()))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            }
            cur = next;
        }
        let mut files: Vec<PathBuf> = cur.into_iter().filter(|f| f.is_file()).collect();
        files.sort();
        out.extend(files);
    }
    out
}

fn expand_braces(p: &str) -> Vec<String> {
    let Some(open) = p.find('{') else {
        return vec![p.to_string()];
    };
    let mut depth = 0;
    let mut close = None;
    for (i, c) in p[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return vec![p.to_string()];
    };
    let (head, body, tail) = (&p[..open], &p[open + 1..close], &p[close + 1..]);
    let mut out = Vec::new();
    for alt in body.split(',') {
        out.extend(expand_braces(&format!("{head}{alt}{tail}")));
    }
    out
}

/// fnmatch-style match of one path component.
fn wildmatch(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    match p[0] {
        b'*' => (0..=s.len()).any(|i| wildmatch(&p[1..], &s[i..])),
        b'?' => !s.is_empty() && wildmatch(&p[1..], &s[1..]),
        b'\\' if p.len() > 1 => !s.is_empty() && s[0] == p[1] && wildmatch(&p[2..], &s[1..]),
        b'[' => {
            let Some(end) = p.iter().skip(2).position(|&c| c == b']').map(|e| e + 2) else {
                return !s.is_empty() && s[0] == b'[' && wildmatch(&p[1..], &s[1..]);
            };
            if s.is_empty() {
                return false;
            }
            let set = &p[1..end];
            let (neg, set) = match set.first() {
                Some(b'!') | Some(b'^') => (true, &set[1..]),
                _ => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= s[0] && s[0] <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == s[0];
                    i += 1;
                }
            }
            hit != neg && wildmatch(&p[end + 1..], &s[1..])
        }
        c => !s.is_empty() && s[0] == c && wildmatch(&p[1..], &s[1..]),
    }
}

/// Config::General's value cleanup: surrounding quotes, escapes.
fn clean_value(v: &str) -> String {
    let mut v = v.to_string();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v = v[1..v.len() - 1].to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.peek() {
                if matches!(n, '$' | '\\' | '"' | '#') {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Split `key value` / `key = value` at the first `=` or blank run.
fn split_option(l: &str) -> (String, Option<String>) {
    let b = l.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'=' || b[i].is_ascii_whitespace() {
            // `\s*=\s*` is tried first at this position, then `\s+`.
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let end = if j < b.len() && b[j] == b'=' {
                let mut k = j + 1;
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                k
            } else {
                j
            };
            return (l[..i].to_string(), Some(l[end..].to_string()));
        }
    }
    (l.to_string(), None)
}

fn block_start(t: &str) -> Option<(String, Option<String>)> {
    if !(t.starts_with('<') && t.ends_with('>')) || t.starts_with("</") || t.len() < 3 {
        return None;
    }
    let inner = &t[1..t.len() - 1];
    if inner.len() >= 2
        && inner.starts_with('"')
        && inner.ends_with('"')
        && inner[1..inner.len() - 1].find('"').is_none()
    {
        return Some((inner.replace('"', ""), None));
    }
    let unq = |s: &str| {
        if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
            s[1..s.len() - 1].to_string()
        } else {
            s.to_string()
        }
    };
    match inner.find(char::is_whitespace) {
        Some(p) => {
            let name = inner[p..].trim();
            Some((unq(&inner[..p]), (!name.is_empty()).then(|| unq(name))))
        }
        None => Some((unq(inner), None)),
    }
}

/// How deeply blocks may nest. tgt-admin's files use two levels
/// (`<target>` holding `<backing-store>` / `<direct-store>`). Config::General
/// has no limit, but each level here is a recursive call that scans the
/// rest of the file for its end, so an unbounded depth means a stack
/// overflow and quadratic time on a file of nothing but `<a>` lines
/// (found by the `targets_conf` fuzz target).
const MAX_BLOCK_DEPTH: usize = 32;

/// Config::General's `_parse`, into `into` (merging); `level` counts the
/// blocks around `lines`.
fn parse_lines(into: &mut Block, lines: &[(String, Loc)], level: usize) -> Result<(), ConfError> {
    let mut i = 0;
    while i < lines.len() {
        let (raw, loc) = &lines[i];
        let t = raw.trim();
        i += 1;
        if t.starts_with("</") && t.ends_with('>') {
            return err(loc, format!("{t} has no start block"));
        }
        if let Some((name, arg)) = block_start(t) {
            if level >= MAX_BLOCK_DEPTH {
                return err(
                    loc,
                    format!("block <{name}> is nested more than {MAX_BLOCK_DEPTH} deep"),
                );
            }
            // Find the matching end, counting nested blocks.
            let mut depth = 0;
            let mut end = None;
            for (j, (l, _)) in lines.iter().enumerate().skip(i) {
                let l = l.trim();
                if l.starts_with("</") && l.ends_with('>') {
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                    depth -= 1;
                } else if block_start(l).is_some() {
                    depth += 1;
                }
            }
            let Some(end) = end else {
                return err(loc, format!("block <{name}> has no end block </{name}>"));
            };
            let body = &lines[i..end];
            i = end + 1;
            match arg {
                Some(arg) => {
                    let slot = into.entries.entry(name.clone()).or_insert_with(|| {
                        Value::Block(Block {
                            entries: BTreeMap::new(),
                            loc: loc.clone(),
                        })
                    });
                    let Value::Block(outer) = slot else {
                        return err(
                            loc,
                            format!("block <{name} {arg}>: '{name}' is already set as an option"),
                        );
                    };
                    let inner = outer.entries.entry(arg.clone()).or_insert_with(|| {
                        Value::Block(Block {
                            entries: BTreeMap::new(),
                            loc: loc.clone(),
                        })
                    });
                    let Value::Block(inner) = inner else {
                        return err(loc, format!("block <{name} {arg}> clashes with an option"));
                    };
                    parse_lines(inner, body, level + 1)?;
                }
                None => {
                    let slot = into.entries.entry(name.clone()).or_insert_with(|| {
                        Value::Block(Block {
                            entries: BTreeMap::new(),
                            loc: loc.clone(),
                        })
                    });
                    let Value::Block(b) = slot else {
                        return err(
                            loc,
                            format!("block <{name}>: '{name}' is already set as an option"),
                        );
                    };
                    parse_lines(b, body, level + 1)?;
                }
            }
            continue;
        }
        let (k, v) = split_option(t);
        let v = v.map(|v| clean_value(&v)).filter(|v| !v.is_empty());
        let new = Value::Scalar(v, loc.clone());
        match into.entries.get_mut(&k) {
            None => {
                into.entries.insert(k, new);
            }
            Some(Value::List(l)) => l.push(new),
            Some(old) => {
                let prev = std::mem::replace(old, Value::List(Vec::new()));
                *old = Value::List(vec![prev, new]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (targets_conf fuzz target): thousands of nested blocks
    /// overflowed the stack and took quadratic time; now refused at
    /// [`MAX_BLOCK_DEPTH`].
    #[test]
    fn deep_nesting_is_refused() {
        let n = 20_000;
        let text = "<a>\n".repeat(n) + &"</a>\n".repeat(n);
        let e = parse_str(&text, "deep.conf").unwrap_err();
        assert_eq!(e.loc.line, MAX_BLOCK_DEPTH + 1);
        assert!(e.msg.contains("nested more than"), "{}", e.msg);
    }

    #[test]
    fn nesting_up_to_the_limit_parses() {
        let n = MAX_BLOCK_DEPTH;
        let text = "<a x>\n".repeat(n) + "k v\n" + &"</a>\n".repeat(n);
        let mut b = &parse_str(&text, "ok.conf").unwrap();
        for _ in 0..n {
            let Some(Value::Block(outer)) = b.get("a") else {
                panic!("no block a");
            };
            let Some(Value::Block(inner)) = outer.get("x") else {
                panic!("no block x");
            };
            b = inner;
        }
        assert_eq!(b.str("k"), Some("v"));
    }
}
