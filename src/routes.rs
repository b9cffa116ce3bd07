//! Route table: canonical path + method -> the route that handles it.
//!
//! First match wins; a request no route matches is refused. Patterns are
//! compiled once: literal segments, `{param}` single segments, and a trailing
//! `/**` that matches the prefix itself and everything below it.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, Method};

use crate::authz::Requirement;
use crate::claims::ClaimPath;
use crate::forward::Upstream;

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{name}`: any one non-empty segment.
    Param,
}

/// A compiled path pattern.
#[derive(Debug, Clone)]
pub struct PathPattern {
    text: Box<str>,
    segments: Box<[Segment]>,
    /// Ends in `/**`.
    prefix: bool,
}

/// Why a pattern was refused at load.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with `/`")]
    NotAbsolute,
    #[error("`**` is allowed only as the last segment, as `/prefix/**`")]
    MisplacedWildcard,
    #[error("`{{param}}` must be a whole segment with a name")]
    BadParam,
    #[error("`//` can never match: requests are matched after empty segments are merged")]
    EmptySegment,
    #[error(
        "segment `{0}` is not in canonical form (requests are matched after canonicalisation, so it could never match); write `{1}`"
    )]
    NotCanonical(String, String),
}

impl PathPattern {
    /// Compile a pattern as written in the config.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let body = text.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
        // Requests never have `//` once canonical, so such a pattern could never match.
        if text.contains("//") {
            return Err(PatternError::EmptySegment);
        }
        let (body, prefix) = match body.strip_suffix("**") {
            Some(rest) if rest.is_empty() || rest.ends_with('/') => {
                (rest.strip_suffix('/').unwrap_or(rest), true)
            }
            _ => (body, false),
        };
        let mut segments = Vec::new();
        if !(prefix && body.is_empty()) {
            for raw in body.split('/') {
                segments.push(Self::segment(raw)?);
            }
        }
        // `/` itself is one empty segment, as a request for `/` splits.
        Ok(Self {
            text: text.into(),
            segments: segments.into(),
            prefix,
        })
    }

    fn segment(raw: &str) -> Result<Segment, PatternError> {
        if raw.contains('*') {
            return Err(PatternError::MisplacedWildcard);
        }
        if raw.contains('{') || raw.contains('}') {
            let name = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            return match name {
                Some(n) if !n.is_empty() && !n.contains(['{', '}']) => Ok(Segment::Param),
                _ => Err(PatternError::BadParam),
            };
        }
        let as_path = format!("/{raw}");
        match crate::path::canonicalize(&as_path) {
            Ok(c) if c.as_str() == as_path => Ok(Segment::Literal(raw.into())),
            Ok(c) => Err(PatternError::NotCanonical(
                raw.into(),
                c.as_str()[1..].into(),
            )),
            Err(_) => Err(PatternError::NotCanonical(
                raw.into(),
                "a canonical segment".into(),
            )),
        }
    }

    /// The first segment when it is a literal (what the route index keys).
    fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(lit)) => Some(lit),
            _ => None,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does a canonical path match? Literal segments compare ASCII
    /// case-insensitively and an exact pattern also takes one trailing slash,
    /// because many frameworks behind a gateway (Express, ASP.NET) route
    /// `/Admin/` to the handler of `/admin`: a protected route must catch
    /// every spelling its upstream serves. Allocation-free.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in self.segments.iter() {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(lit) => lit.eq_ignore_ascii_case(part),
                Segment::Param => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        if self.prefix {
            return true;
        }
        match parts.next() {
            None => true,
            Some("") => !self.ends_in_slash() && parts.next().is_none(),
            Some(_) => false,
        }
    }

    fn ends_in_slash(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Literal(l)) if l.is_empty())
    }

    /// True when every path `other` matches is also matched by `self`.
    pub fn covers(&self, other: &PathPattern) -> bool {
        for (index, mine) in self.segments.iter().enumerate() {
            let Some(theirs) = other.segments.get(index) else {
                // `other` matches paths shorter than `self` accepts.
                return false;
            };
            let ok = match (mine, theirs) {
                (Segment::Literal(a), Segment::Literal(b)) => a.eq_ignore_ascii_case(b),
                (Segment::Param, Segment::Literal(b)) => !b.is_empty(),
                (Segment::Param, Segment::Param) => true,
                (Segment::Literal(_), Segment::Param) => false,
            };
            if !ok {
                return false;
            }
        }
        if self.prefix {
            return true;
        }
        if other.prefix {
            return false;
        }
        let (mine, theirs) = (self.segments.len(), other.segments.len());
        // `/a` also takes `/a/`, so it covers the pattern `/a/`.
        theirs == mine || (theirs == mine + 1 && other.ends_in_slash() && !self.ends_in_slash())
    }

    /// `/**`: every path.
    pub fn matches_every_path(&self) -> bool {
        self.prefix && self.segments.is_empty()
    }

    /// True when some path matches both patterns.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        let both = self.segments.iter().zip(other.segments.iter());
        let compatible = both.into_iter().all(|pair| match pair {
            (Segment::Literal(a), Segment::Literal(b)) => a.eq_ignore_ascii_case(b),
            (Segment::Param, Segment::Literal(l)) | (Segment::Literal(l), Segment::Param) => {
                !l.is_empty()
            }
            (Segment::Param, Segment::Param) => true,
        });
        if !compatible {
            return false;
        }
        let (short, long) = if self.segments.len() <= other.segments.len() {
            (self, other)
        } else {
            (other, self)
        };
        let (n, m) = (short.segments.len(), long.segments.len());
        // The shorter one must reach as far as the longer one: by `/**`,
        // by being as long, or by the one trailing slash an exact pattern takes.
        short.prefix || n == m || (m == n + 1 && long.ends_in_slash() && !short.ends_in_slash())
    }
}

/// A route as the request path uses it. Built once at config load.
#[derive(Debug)]
pub struct Route {
    /// Position in the config, for logs and metrics (`routes[3]`).
    pub index: usize,
    pub pattern: PathPattern,
    /// `None` means every method.
    pub methods: Option<Box<[Method]>>,
    pub upstream: Arc<Upstream>,
    pub access: Access,
    /// Claim -> header sent upstream.
    pub forward_claims: Box<[(ClaimPath, HeaderName)]>,
    pub strip_authorization: bool,
    /// Accept `%2F` in the path (kept encoded).
    pub allow_encoded_slash: bool,
    /// Accept `;` in the path.
    pub allow_semicolon: bool,
    /// Only over a connection with a verified client certificate.
    pub client_cert_required: bool,
    /// Send the client certificate's `X-Forwarded-Client-Cert`.
    pub forward_client_cert: bool,
    /// Until the upstream's response headers; `None`: the upstream's own.
    pub timeout: Option<std::time::Duration>,
    /// Largest request body forwarded; `413` beyond.
    pub max_body: u64,
    /// Upgrade protocols forwarded (lower-case), e.g. `websocket`.
    pub upgrades: Box<[Box<str>]>,
    pub rate_limit: Option<Arc<crate::rate_limit::RateLimiter>>,
    pub cors: Option<crate::cors::Cors>,
}

/// Who may use a route.
#[derive(Debug)]
pub enum Access {
    /// No credential needed.
    Public,
    /// A credential of an accepted kind, meeting the requirement.
    Protected(Protected),
}

/// The credentials a protected route takes, and what they must grant.
#[derive(Debug)]
pub struct Protected {
    /// `Authorization: Bearer` JWTs.
    pub bearer: bool,
    /// Keys from the `api_keys` section.
    pub api_key: bool,
    pub requirement: Requirement,
    /// Tokens must be DPoP-bound and come with a valid proof.
    pub dpop_required: bool,
}

impl Route {
    fn accepts_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// True when every request this route matches is taken by `self` first.
    pub fn shadows(&self, later: &Route) -> bool {
        let methods_cover = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        };
        methods_cover && self.pattern.covers(&later.pattern)
    }
}

/// The ordered routes, indexed by their first path segment so that a
/// request looks only at the routes that could match it (first match still
/// wins: candidates are visited in config order).
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
    /// Lower-cased first literal segment → positions of the routes that
    /// start with it.
    by_first: HashMap<Box<str>, Box<[usize]>>,
    /// Positions of the routes any first segment may match: `{param}` first,
    /// or `/**`.
    any_first: Box<[usize]>,
}

/// Longest first segment looked up in the index; longer ones scan all routes.
const MAX_INDEXED: usize = 64;

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut by_first: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut any_first = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match route.pattern.first_literal() {
                Some(first) => by_first
                    .entry(first.to_ascii_lowercase().into())
                    .or_default()
                    .push(i),
                None => any_first.push(i),
            }
        }
        Self {
            routes: routes.into(),
            by_first: by_first
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            any_first: any_first.into(),
        }
    }

    /// First route matching the canonical path and method.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        let fits = |r: &&Route| r.accepts_method(method) && r.pattern.matches(path);
        let first = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .next()
            .unwrap_or("");
        let mut lower = [0u8; MAX_INDEXED];
        let Some(key) = lower.get_mut(..first.len()).and_then(|buf| {
            buf.copy_from_slice(first.as_bytes());
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).ok()
        }) else {
            return self.routes.iter().find(fits);
        };
        let literal: &[usize] = self.by_first.get(key).map_or(&[], |v| v);
        // Merge the two ascending lists, so config order decides.
        let (mut a, mut b) = (literal.iter().peekable(), self.any_first.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            if let Some(route) = next.and_then(|&i| self.routes.get(i)).filter(fits) {
                return Some(route);
            }
        }
    }

    /// The routes, to carry state over from a previous runtime.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Route> {
        self.routes.iter_mut()
    }

    /// The route at this position in the config.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_prefix_and_param_patterns_match_as_documented() {
        let cases: &[(&str, &str, bool)] = &[
            ("/profile", "/profile", true),
            ("/profile", "/profile/", true),
            ("/profile", "/PROFILE", true),
            ("/profile/", "/profile/", true),
            ("/profile/", "/profile", false),
            ("/Admin/**", "/aDMIN/x", true),
            ("/profile", "/profiles", false),
            ("/profile", "/profile/x", false),
            ("/admin/**", "/admin", true),
            ("/admin/**", "/admin/", true),
            ("/admin/**", "/admin/users/1", true),
            ("/admin/**", "/administrator", false),
            ("/users/{id}", "/users/42", true),
            ("/users/{id}", "/users/", false),
            ("/users/{id}", "/users/42/x", false),
            ("/users/{id}/orders", "/users/7/orders", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(p(pattern).matches(path), *expected, "{pattern} vs {path}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(
            PathPattern::parse("admin").unwrap_err(),
            PatternError::NotAbsolute
        );
        assert_eq!(
            PathPattern::parse("/a/**/b").unwrap_err(),
            PatternError::MisplacedWildcard
        );
        assert_eq!(
            PathPattern::parse("/a*").unwrap_err(),
            PatternError::MisplacedWildcard
        );
        assert_eq!(
            PathPattern::parse("/a/{}").unwrap_err(),
            PatternError::BadParam
        );
        assert_eq!(
            PathPattern::parse("/a/x{id}").unwrap_err(),
            PatternError::BadParam
        );
        for empty in ["/a//b", "//**", "//"] {
            assert_eq!(
                PathPattern::parse(empty).unwrap_err(),
                PatternError::EmptySegment,
                "{empty}"
            );
        }
        assert!(matches!(
            PathPattern::parse("/a/../b"),
            Err(PatternError::NotCanonical(..))
        ));
        assert!(matches!(
            PathPattern::parse("/a/%7euser"),
            Err(PatternError::NotCanonical(..))
        ));
    }

    #[test]
    fn coverage_is_decided_segment_by_segment() {
        let cases: &[(&str, &str, bool)] = &[
            ("/a/**", "/a", true),
            ("/a/**", "/a/b/c", true),
            ("/a/**", "/a/{x}/**", true),
            ("/a/{x}", "/a/b", true),
            ("/a/{x}", "/a/**", false),
            ("/a/b", "/a/{x}", false),
            ("/a", "/a", true),
            ("/a", "/a/**", false),
            ("/**", "/", true),
            ("/public/**", "/admin/**", false),
            ("/a/{x}", "/a/", false),
            ("/a", "/a/", true),
            ("/a/", "/a", false),
            ("/A/**", "/a/b", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(p(a).covers(&p(b)), *expected, "{a} covers {b}");
        }
    }

    #[test]
    fn overlap_is_some_path_matched_by_both() {
        let cases: &[(&str, &str, bool)] = &[
            ("/admin/health", "/admin/**", true),
            ("/admin/**", "/admin/health", true),
            ("/**", "/anything", true),
            ("/a/{x}", "/a/b", true),
            ("/a/{x}", "/a/b/c", false),
            ("/a/{x}/c", "/a/b/**", true),
            ("/a", "/a/", true),
            ("/a/", "/a/b", false),
            ("/a/b/**", "/a", false),
            ("/public/**", "/admin/**", false),
            ("/A/b", "/a/B", true),
            ("/a/{x}", "/a/", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(p(a).overlaps(&p(b)), *expected, "{a} overlaps {b}");
            assert_eq!(p(b).overlaps(&p(a)), *expected, "{b} overlaps {a}");
        }
    }

    mod index {
        use super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "B", "ab", "{id}", "c"]).prop_map(String::from)
        }

        /// A config with these route patterns (those that compile).
        fn table(patterns: &[String]) -> Option<RouteTable> {
            let mut yaml = String::from(
                "listen: 127.0.0.1:0\nupstreams:\n  u: { url: \"http://127.0.0.1:9\" }\nroutes:\n",
            );
            for p in patterns {
                yaml.push_str(&format!(
                    "  - {{ path: \"{p}\", upstream: u, auth: none }}\n"
                ));
            }
            crate::config::from_str(&yaml, "t.yaml", |_| None)
                .ok()
                .map(|c| c.routes)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The first-segment index finds exactly the route a scan in
            /// config order finds.
            #[test]
            fn the_index_agrees_with_a_scan(
                patterns in prop::collection::vec(
                    (prop::collection::vec(segment(), 0..3), any::<bool>()).prop_map(|(segs, prefix)| {
                        let mut p = format!("/{}", segs.join("/"));
                        if prefix {
                            p = if p == "/" { "/**".into() } else { format!("{p}/**") };
                        }
                        p
                    }),
                    1..8,
                ),
                path in prop::collection::vec(prop::sample::select(vec!["a", "A", "b", "ab", "AB", "c", "x", ""]), 1..4)
                    .prop_map(|segs| format!("/{}", segs.join("/"))),
            ) {
                let Some(table) = table(&patterns) else { return Ok(()) };
                let Ok(canonical) = crate::path::canonicalize(&path) else { return Ok(()) };
                let path = canonical.as_str();
                let scanned = table
                    .iter()
                    .find(|r| r.accepts_method(&Method::GET) && r.pattern.matches(path))
                    .map(|r| r.index);
                prop_assert_eq!(table.find(&Method::GET, path).map(|r| r.index), scanned);
            }

            /// An overlap is never missed: a path both patterns match means
            /// `overlaps` says so (the explain findings rely on it).
            #[test]
            fn a_path_matched_by_two_patterns_is_an_overlap(
                a in (prop::collection::vec(segment(), 0..3), any::<bool>()),
                b in (prop::collection::vec(segment(), 0..3), any::<bool>()),
                path in prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "c", "x", ""]), 1..4)
                    .prop_map(|segs| format!("/{}", segs.join("/"))),
            ) {
                let pattern = |(segs, prefix): &(Vec<String>, bool)| {
                    let p = format!("/{}", segs.join("/"));
                    let p = if *prefix { if p == "/" { "/**".into() } else { format!("{p}/**") } } else { p };
                    PathPattern::parse(&p).ok()
                };
                let (Some(a), Some(b)) = (pattern(&a), pattern(&b)) else { return Ok(()) };
                let Ok(canonical) = crate::path::canonicalize(&path) else { return Ok(()) };
                if a.matches(canonical.as_str()) && b.matches(canonical.as_str()) {
                    prop_assert!(a.overlaps(&b), "{} and {} both match {}", a.as_str(), b.as_str(), canonical.as_str());
                }
            }
        }
    }
}
