//! CORS for browser clients, per route. The gateway answers preflight
//! requests itself, without a token (browsers never send one on a
//! preflight), and adds the `Access-Control-*` headers to every answer on
//! the route, its own refusals included, so a browser can read a 401.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};

const ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;

/// A route's CORS policy, compiled.
#[derive(Debug)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), or any when `None`.
    origins: Option<Box<[HeaderValue]>>,
    methods: Box<[Method]>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

/// What a preflight gets.
pub enum Preflight {
    /// 204 with the allow headers.
    Allowed,
    /// 403: the origin or the method is not allowed.
    Refused,
}

impl Cors {
    /// `origins` are `scheme://host[:port]` or `*`; the rest already
    /// checked at load.
    pub fn new(
        origins: &[String],
        methods: Vec<Method>,
        headers: &[String],
        expose: &[String],
        max_age: u64,
        credentials: bool,
    ) -> Result<Self, String> {
        let origins = if origins.iter().any(|o| o == "*") {
            if credentials {
                return Err("`*` cannot be combined with `allow_credentials` (the Fetch standard forbids it); list the origins".into());
            }
            None
        } else {
            Some(
                origins
                    .iter()
                    .map(|o| {
                        let uri: http::Uri =
                            o.parse().map_err(|_| format!("`{o}` is not an origin"))?;
                        let ok = matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.authority().is_some()
                            && matches!(uri.path(), "" | "/")
                            && !o.ends_with('/');
                        if !ok {
                            return Err(format!(
                                "`{o}` is not an origin such as https://app.example.com"
                            ));
                        }
                        HeaderValue::from_str(o).map_err(|e| e.to_string())
                    })
                    .collect::<Result<Box<[HeaderValue]>, String>>()?,
            )
        };
        let join = |items: &mut dyn Iterator<Item = &str>| items.collect::<Vec<_>>().join(", ");
        let allow_methods = join(&mut methods.iter().map(Method::as_str));
        let allow_headers = if headers.is_empty() {
            "authorization, content-type, dpop".to_owned()
        } else {
            join(&mut headers.iter().map(String::as_str))
        };
        let value = |text: String| HeaderValue::from_str(&text).map_err(|e| e.to_string());
        Ok(Self {
            origins,
            allow_methods: value(allow_methods)?,
            methods: methods.into(),
            allow_headers: value(allow_headers)?,
            expose_headers: (!expose.is_empty())
                .then(|| value(join(&mut expose.iter().map(String::as_str))))
                .transpose()?,
            max_age: value(max_age.to_string())?,
            credentials,
        })
    }

    /// Is this a preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`)? Then the method it asks about.
    pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
        if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
            return None;
        }
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(asked.as_bytes()).ok()
    }

    /// Judge a preflight for `method` from `origin`.
    pub fn preflight(&self, origin: &HeaderValue, method: &Method) -> Preflight {
        if self.allowed_origin(origin).is_some() && self.methods.contains(method) {
            Preflight::Allowed
        } else {
            Preflight::Refused
        }
    }

    /// Apply the route's policy to a response. The upstream's own
    /// `Access-Control-*` headers always go (they must not widen the
    /// policy, and two sets make browsers refuse the answer); the route's
    /// are added for an allowed `origin`. `Vary: Origin` on every answer, so
    /// a shared cache never serves one origin's answer to another.
    pub fn decorate<B>(
        &self,
        origin: Option<&HeaderValue>,
        response: &mut Response<B>,
        preflight: bool,
    ) {
        let headers = response.headers_mut();
        if headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-"))
        {
            let upstream_cors: Vec<HeaderName> = headers
                .keys()
                .filter(|name| name.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for name in upstream_cors {
                headers.remove(name);
            }
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        let Some(origin) = origin.and_then(|o| self.allowed_origin(o)) else {
            return;
        };
        headers.insert(ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.allow_headers.clone(),
            );
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        } else if let Some(expose) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// Is `origin` one the policy allows?
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.allowed_origin(origin).is_some()
    }

    /// The value of `Access-Control-Allow-Origin` for this request, if its
    /// origin is allowed: `*`, or the origin itself.
    fn allowed_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            // `*` with credentials is refused at load.
            None => Some(HeaderValue::from_static("*")),
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }
}
