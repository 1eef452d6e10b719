//! Map files (`map(file)` converters, `core.set_map`): loaded at parse
//! time, shared by all requests, changeable at run time.
//!
//! This module owns the [`MapStore`] (one [`MapFile`] per file, cached by
//! canonical path), the lookups per match kind (`str`, `beg`, `ip`...) and
//! two pattern types shared with ACLs: [`IntRange`] and [`IpNet`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use regex::Regex;

/// How a map key is compared with the input (`map_<match>` converters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapMatch {
    /// Exact string (hashed).
    Str,
    /// The input begins with the key.
    Beg,
    /// The input ends with the key.
    End,
    /// The input contains the key.
    Sub,
    /// The key is a regex matching the input.
    Reg,
    /// The key is a dot-delimited part of the input (domain).
    Dom,
    /// The key is a slash-delimited part of the input (directory).
    Dir,
    /// The key is an integer or a range `N:M`.
    Int,
    /// The key is an address or a CIDR network; the longest prefix wins.
    Ip,
}

impl MapMatch {
    /// Parses the match kind as written in a converter name (`map_beg`).
    pub fn parse(s: &str) -> Option<MapMatch> {
        Some(match s {
            "str" => MapMatch::Str,
            "beg" => MapMatch::Beg,
            "end" => MapMatch::End,
            "sub" => MapMatch::Sub,
            "reg" => MapMatch::Reg,
            "dom" => MapMatch::Dom,
            "dir" => MapMatch::Dir,
            "int" => MapMatch::Int,
            "ip" => MapMatch::Ip,
            _ => return None,
        })
    }
}

/// An integer pattern: a value or a closed/open range (`N`, `N:M`, `:M`, `N:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntRange {
    /// Lowest value included (none: unbounded).
    pub min: Option<i64>,
    /// Highest value included (none: unbounded).
    pub max: Option<i64>,
}

impl IntRange {
    /// Parses `N`, `N:M`, `:M` or `N:`.
    pub fn parse(s: &str) -> Option<IntRange> {
        let int = |t: &str| -> Option<Option<i64>> {
            if t.is_empty() {
                Some(None)
            } else {
                t.parse::<i64>().ok().map(Some)
            }
        };
        match s.split_once(':') {
            Some((a, b)) => {
                let (min, max) = (int(a)?, int(b)?);
                if min.is_none() && max.is_none() {
                    return None;
                }
                Some(IntRange { min, max })
            }
            None => {
                let v = s.parse::<i64>().ok()?;
                Some(IntRange {
                    min: Some(v),
                    max: Some(v),
                })
            }
        }
    }

    /// Whether `v` is in the range.
    pub fn contains(&self, v: i64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// An address or network pattern (`10.0.0.0/8`, `10.0.0.0/255.0.0.0`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length in bits (32 or 128 for a single address).
    pub prefix: u8,
}

impl IpNet {
    /// Parses an address, `ADDR/LEN` or an IPv4 `ADDR/MASK`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, m) = match s.split_once('/') {
            Some((a, m)) => (a, Some(m)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match m {
            None => max,
            Some(m) => match m.parse::<u8>() {
                Ok(p) if p <= max => p,
                Ok(_) => return None,
                Err(_) => {
                    let mask: Ipv4Addr = m.parse().ok()?;
                    if !addr.is_ipv4() {
                        return None;
                    }
                    let bits = u32::from(mask);
                    // Only contiguous masks describe a prefix.
                    if bits.leading_ones() + bits.trailing_zeros() != 32 {
                        return None;
                    }
                    bits.leading_ones() as u8
                }
            },
        };
        Some(IpNet {
            addr: mask_addr(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside the network. IPv4 addresses match IPv6
    /// networks through `::ffff:a.b.c.d` and IPv4-mapped IPv6 addresses
    /// match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask_addr(ip, self.prefix) == self.addr
            }
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => mask_addr(IpAddr::V4(v4), self.prefix) == self.addr,
                None => false,
            },
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                mask_addr(IpAddr::V6(v4.to_ipv6_mapped()), self.prefix) == self.addr
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Keeps the first `prefix` bits of an address.
pub fn mask_addr(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// HAProxy's `match_word`: whether `pat` occurs in `s` bounded by one of
/// `delims` (or the ends of `s`) on both sides. Delimiters at the ends of
/// the pattern are ignored. Used by the `dom` and `dir` matches.
pub fn match_word(s: &str, pat: &str, delims: &[u8], ci: bool) -> bool {
    let pat = pat.trim_matches(|c: char| c.is_ascii() && delims.contains(&(c as u8)));
    if pat.is_empty() {
        return false;
    }
    let (s, pat) = if ci {
        (s.to_ascii_lowercase(), pat.to_ascii_lowercase())
    } else {
        (s.to_string(), pat.to_string())
    };
    let sb = s.as_bytes();
    let mut start = 0;
    while let Some(pos) = s[start..].find(&pat) {
        let at = start + pos;
        let end = at + pat.len();
        let before_ok = at == 0 || delims.contains(&sb[at - 1]);
        let after_ok = end == sb.len() || delims.contains(&sb[end]);
        if before_ok && after_ok {
            return true;
        }
        // Move past this occurrence's first character (char boundary safe).
        start = at + s[at..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Delimiters of the `dom` match.
pub const DOM_DELIMS: &[u8] = b"/?.:";
/// Delimiters of the `dir` match.
pub const DIR_DELIMS: &[u8] = b"/?";

struct Entry {
    key: String,
    value: String,
    re: OnceLock<Option<Regex>>,
    net: OnceLock<Option<IpNet>>,
    int: OnceLock<Option<IntRange>>,
}

impl Entry {
    fn new(key: String, value: String) -> Entry {
        Entry {
            key,
            value,
            re: OnceLock::new(),
            net: OnceLock::new(),
            int: OnceLock::new(),
        }
    }
    fn regex(&self) -> Option<&Regex> {
        self.re.get_or_init(|| Regex::new(&self.key).ok()).as_ref()
    }
    fn net(&self) -> Option<&IpNet> {
        self.net.get_or_init(|| IpNet::parse(&self.key)).as_ref()
    }
    fn int(&self) -> Option<&IntRange> {
        self.int.get_or_init(|| IntRange::parse(&self.key)).as_ref()
    }
}

#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    /// First position of each key.
    index: HashMap<String, usize>,
}

impl Entries {
    fn reindex(&mut self) {
        self.index.clear();
        for (i, e) in self.list.iter().enumerate() {
            self.index.entry(e.key.clone()).or_insert(i);
        }
    }
    fn push(&mut self, key: String, value: String) {
        self.index.entry(key.clone()).or_insert(self.list.len());
        self.list.push(Entry::new(key, value));
    }
}

/// One map file: ordered `key value` entries, shared and changeable.
pub struct MapFile {
    /// The name it was first loaded as (as written in the configuration).
    pub name: String,
    /// The canonical path.
    pub path: PathBuf,
    entries: RwLock<Entries>,
}

impl fmt::Debug for MapFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapFile")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("entries", &self.len())
            .finish()
    }
}

impl MapFile {
    /// An empty map (not backed by a file).
    pub fn new(name: &str) -> MapFile {
        MapFile {
            name: name.to_string(),
            path: PathBuf::from(name),
            entries: RwLock::new(Entries::default()),
        }
    }

    /// Parses map file contents: `key value...` per line, `#` comments and
    /// blank lines ignored; the value is the rest of the line, trimmed.
    pub fn parse_into(&self, text: &str) {
        let mut e = self.entries.write();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = match line.split_once([' ', '\t']) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            e.push(k.to_string(), v.to_string());
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.read().list.len()
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries, in order.
    pub fn entries(&self) -> Vec<(String, String)> {
        self.entries
            .read()
            .list
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    /// Sets the value of `key` (all its entries), adding it if missing.
    pub fn set(&self, key: &str, value: &str) {
        let mut e = self.entries.write();
        let mut found = false;
        for ent in e.list.iter_mut().filter(|x| x.key == key) {
            ent.value = value.to_string();
            found = true;
        }
        if !found {
            e.push(key.to_string(), value.to_string());
        }
    }

    /// Appends an entry, even if the key exists (`add map`).
    pub fn add(&self, key: &str, value: &str) {
        self.entries
            .write()
            .push(key.to_string(), value.to_string());
    }

    /// Removes every entry of `key`; whether one existed.
    pub fn del(&self, key: &str) -> bool {
        let mut e = self.entries.write();
        let before = e.list.len();
        e.list.retain(|x| x.key != key);
        let removed = e.list.len() != before;
        if removed {
            e.reindex();
        }
        removed
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let mut e = self.entries.write();
        e.list.clear();
        e.index.clear();
    }

    /// Looks a string up with a string match kind (`Str`, `Beg`, `End`,
    /// `Sub`, `Reg`, `Dom`, `Dir`); `Int` and `Ip` parse the input first.
    pub fn lookup_str(&self, kind: MapMatch, input: &str) -> Option<String> {
        let e = self.entries.read();
        let found = match kind {
            MapMatch::Str => e.index.get(input).and_then(|&i| e.list.get(i)),
            MapMatch::Beg => e.list.iter().find(|x| input.starts_with(&x.key)),
            MapMatch::End => e.list.iter().find(|x| input.ends_with(&x.key)),
            MapMatch::Sub => e.list.iter().find(|x| input.contains(&x.key)),
            MapMatch::Reg => e
                .list
                .iter()
                .find(|x| x.regex().is_some_and(|r| r.is_match(input))),
            MapMatch::Dom => e
                .list
                .iter()
                .find(|x| match_word(input, &x.key, DOM_DELIMS, false)),
            MapMatch::Dir => e
                .list
                .iter()
                .find(|x| match_word(input, &x.key, DIR_DELIMS, false)),
            MapMatch::Int => {
                let v = crate::sample::parse_leading_int(input)?;
                drop(e);
                return self.lookup_int(v);
            }
            MapMatch::Ip => {
                let ip: IpAddr = input.trim().parse().ok()?;
                drop(e);
                return self.lookup_ip(ip);
            }
        };
        found.map(|x| x.value.clone())
    }

    /// Looks an integer up (keys are integers or ranges); first match wins.
    pub fn lookup_int(&self, v: i64) -> Option<String> {
        let e = self.entries.read();
        e.list
            .iter()
            .find(|x| x.int().is_some_and(|r| r.contains(v)))
            .map(|x| x.value.clone())
    }

    /// Looks an address up (keys are addresses or networks); the longest
    /// matching prefix wins, the first one among equals.
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<String> {
        let e = self.entries.read();
        let mut best: Option<(u8, &Entry)> = None;
        for x in &e.list {
            if let Some(net) = x.net()
                && net.contains(ip)
            {
                // Compare prefixes in the IPv6 space so v4 and v6 keys rank together.
                let p = if net.addr.is_ipv4() {
                    net.prefix + 96
                } else {
                    net.prefix
                };
                if best.is_none_or(|(bp, _)| p > bp) {
                    best = Some((p, x));
                }
            }
        }
        best.map(|(_, x)| x.value.clone())
    }
}

/// All map files of a configuration, loaded once and shared.
#[derive(Debug, Default)]
pub struct MapStore {
    by_path: RwLock<HashMap<PathBuf, Arc<MapFile>>>,
    by_name: RwLock<HashMap<String, Arc<MapFile>>>,
}

impl MapStore {
    /// An empty store.
    pub fn new() -> MapStore {
        MapStore::default()
    }

    /// Loads a map file, or returns the already loaded one with the same
    /// canonical path.
    pub fn load(&self, path: &Path) -> Result<Arc<MapFile>, String> {
        self.load_as(&path.to_string_lossy(), path)
    }

    /// Loads `path` and also registers it under `name` (the name written
    /// in the configuration, which `get` and `core.set_map` use).
    pub fn load_as(&self, name: &str, path: &Path) -> Result<Arc<MapFile>, String> {
        let canon = std::fs::canonicalize(path)
            .map_err(|e| format!("cannot open map file '{}': {e}", path.display()))?;
        if let Some(m) = self.by_path.read().get(&canon).cloned() {
            self.register_names(name, path, &m);
            return Ok(m);
        }
        let text = std::fs::read_to_string(&canon)
            .map_err(|e| format!("cannot open map file '{}': {e}", path.display()))?;
        let m = MapFile {
            name: name.to_string(),
            path: canon.clone(),
            entries: RwLock::new(Entries::default()),
        };
        m.parse_into(&text);
        let m = Arc::new(m);
        let m = self
            .by_path
            .write()
            .entry(canon)
            .or_insert_with(|| Arc::clone(&m))
            .clone();
        self.register_names(name, path, &m);
        Ok(m)
    }

    fn register_names(&self, name: &str, path: &Path, m: &Arc<MapFile>) {
        let mut names = self.by_name.write();
        names.insert(name.to_string(), Arc::clone(m));
        names.insert(path.to_string_lossy().to_string(), Arc::clone(m));
    }

    /// A loaded map, by the name it was written as, its path or its
    /// canonical path.
    pub fn get(&self, name: &str) -> Option<Arc<MapFile>> {
        if let Some(m) = self.by_name.read().get(name) {
            return Some(Arc::clone(m));
        }
        let paths = self.by_path.read();
        if let Some(m) = paths.get(Path::new(name)) {
            return Some(Arc::clone(m));
        }
        let canon = std::fs::canonicalize(name).ok()?;
        paths.get(&canon).cloned()
    }

    /// Sets `key` to `value` in a loaded map (adding the key if missing).
    pub fn set(&self, file: &str, key: &str, value: &str) -> Result<(), String> {
        let m = self.get(file).ok_or_else(|| {
            format!("unknown map file '{file}', expected a map loaded by the configuration")
        })?;
        m.set(key, value);
        Ok(())
    }

    /// Removes `key` from a loaded map; whether it was there.
    pub fn del(&self, file: &str, key: &str) -> Result<bool, String> {
        let m = self.get(file).ok_or_else(|| {
            format!("unknown map file '{file}', expected a map loaded by the configuration")
        })?;
        Ok(m.del(key))
    }

    /// Every loaded map, once each.
    pub fn all(&self) -> Vec<Arc<MapFile>> {
        self.by_path.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> MapFile {
        let m = MapFile::new("t");
        m.parse_into(text);
        m
    }

    #[test]
    fn parses_lines_and_comments() {
        let m = map("# c\n\nfoo bar baz  \n  k\tv\nlonely\n");
        assert_eq!(
            m.entries(),
            vec![
                ("foo".into(), "bar baz".into()),
                ("k".into(), "v".into()),
                ("lonely".into(), "".into())
            ]
        );
    }

    #[test]
    fn string_lookups() {
        let m = map("/api a\n/api/v2 b\n.png img\nexample.com dom\nstatic dir\n^/r[0-9]+$ reg\n");
        assert_eq!(m.lookup_str(MapMatch::Str, "/api").as_deref(), Some("a"));
        assert_eq!(m.lookup_str(MapMatch::Str, "/ap"), None);
        // First match in file order wins for beg.
        assert_eq!(
            m.lookup_str(MapMatch::Beg, "/api/v2/x").as_deref(),
            Some("a")
        );
        assert_eq!(
            m.lookup_str(MapMatch::End, "/x.png").as_deref(),
            Some("img")
        );
        assert_eq!(
            m.lookup_str(MapMatch::Sub, "xx/api/v2yy").as_deref(),
            Some("a")
        );
        assert_eq!(m.lookup_str(MapMatch::Reg, "/r12").as_deref(), Some("reg"));
        assert_eq!(
            m.lookup_str(MapMatch::Dom, "www.example.com").as_deref(),
            Some("dom")
        );
        assert_eq!(m.lookup_str(MapMatch::Dom, "notexample.com"), None);
        assert_eq!(
            m.lookup_str(MapMatch::Dir, "/a/static/b").as_deref(),
            Some("dir")
        );
        assert_eq!(m.lookup_str(MapMatch::Dir, "/a/statics/b"), None);
    }

    #[test]
    fn int_and_ip_lookups() {
        let m = map("1:9 small\n10 ten\n11: big\n");
        assert_eq!(m.lookup_int(5).as_deref(), Some("small"));
        assert_eq!(m.lookup_int(10).as_deref(), Some("ten"));
        assert_eq!(m.lookup_int(1000).as_deref(), Some("big"));
        assert_eq!(m.lookup_int(0), None);
        let m = map("10.0.0.0/8 lan\n10.1.0.0/16 office\n10.1.2.3 host\n::1 v6lo\n0.0.0.0/0 any\n");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(m.lookup_ip(ip("10.9.9.9")).as_deref(), Some("lan"));
        assert_eq!(m.lookup_ip(ip("10.1.9.9")).as_deref(), Some("office"));
        assert_eq!(m.lookup_ip(ip("10.1.2.3")).as_deref(), Some("host"));
        assert_eq!(m.lookup_ip(ip("::ffff:10.1.2.3")).as_deref(), Some("host"));
        assert_eq!(m.lookup_ip(ip("::1")).as_deref(), Some("v6lo"));
        assert_eq!(m.lookup_ip(ip("8.8.8.8")).as_deref(), Some("any"));
        assert_eq!(
            m.lookup_str(MapMatch::Ip, "10.1.0.1").as_deref(),
            Some("office")
        );
    }

    #[test]
    fn runtime_changes() {
        let m = map("a 1\nb 2\na 3\n");
        m.set("a", "x");
        assert_eq!(m.lookup_str(MapMatch::Str, "a").as_deref(), Some("x"));
        m.set("c", "4");
        assert_eq!(m.lookup_str(MapMatch::Str, "c").as_deref(), Some("4"));
        assert!(m.del("a"));
        assert!(!m.del("a"));
        assert_eq!(m.lookup_str(MapMatch::Str, "a"), None);
        assert_eq!(m.lookup_str(MapMatch::Str, "b").as_deref(), Some("2"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn store_loads_caches_and_reports() {
        let dir = std::env::temp_dir().join(format!("moonbox-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.map");
        std::fs::write(&p, "k v\n").unwrap();
        let s = MapStore::new();
        let a = s.load_as("h.map", &p).unwrap();
        let b = s.load(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(s.get("h.map").is_some());
        assert!(s.get(&p.to_string_lossy()).is_some());
        s.set("h.map", "k", "w").unwrap();
        assert_eq!(b.lookup_str(MapMatch::Str, "k").as_deref(), Some("w"));
        assert_eq!(s.del("h.map", "k"), Ok(true));
        assert!(s.set("nope.map", "k", "v").is_err());
        let err = s.load(&dir.join("missing.map")).unwrap_err();
        assert!(err.starts_with("cannot open map file '"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn patterns() {
        assert_eq!(
            IpNet::parse("10.1.2.3/255.255.0.0"),
            IpNet::parse("10.1.0.0/16")
        );
        assert_eq!(IpNet::parse("10.0.0.0/33"), None);
        assert_eq!(IpNet::parse("10.0.0.0/255.0.255.0"), None);
        assert_eq!(IpNet::parse("nope"), None);
        assert!(
            IpNet::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert_eq!(IntRange::parse(":"), None);
        assert_eq!(IntRange::parse("x"), None);
        assert!(IntRange::parse(":5").unwrap().contains(-3));
        assert!(match_word("/a/b/c", "/b/", DIR_DELIMS, false));
        assert!(match_word("A.Example.COM", "example", DOM_DELIMS, true));
        assert!(!match_word("aexample.com", "example", DOM_DELIMS, false));
    }
}
