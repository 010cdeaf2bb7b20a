//! Verifying callers: credentials, what they may reach, and the auth service's JSON contract.
//!
//! Credentials are named by their shape; each caller dialect reads its own from the request head
//! (header names and its refusals in its own words) and hands over a [`Presented`] value.
//!
//! A client id with a bearer token ([`IdTokenClients`]): tokens are kept only as SHA-256 digests and
//! compared in constant time; an unknown client id still costs one comparison, so timing does not
//! tell which client ids exist. Wrong client id and wrong token get the same message, the one the
//! dialect put in the presented value.
//!
//! An API key ([`ApiKeyClients`]): `KEY|TS` with an HMAC-SHA256 signature (signed credentials), or
//! `KEY` alone (plain credentials, where the key itself is the secret). Credentials are found by the
//! SHA-256 of the presented key, so a plain key is never compared byte by byte; signatures are
//! checked by `signing` in constant time, with the timestamp within a tolerance either way.
//!
//! Bare tokens and signing key ids ([`TokenClients`]) are valid only for the dialect that presents
//! them.
//!
//! Every credential, configured or vouched for by the auth service, is a [`Grant`]: who the caller
//! is, the business it is mapped to, its [`Scope`], and how its signed requests are verified.
//! This module is pure: the auth service's I/O and the decision cache live in `authn`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::delivery::policy::CallbackPolicy;
use crate::error::{ProxyError, Reason};
use crate::limits::{credential_id, CallerLimits};
use crate::request::WholeRequest;
use crate::signing::{HmacKey, SignatureError};

/// The refusal of an API key no credential has.
pub const MSG_INVALID_API_KEY: &str = "invalid API key";

/// Why a caller was refused: the bounded label set of auth metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthReason {
    /// A credential header is missing.
    Missing,
    /// The header is there but not in the expected form.
    Malformed,
    /// Unknown credential or wrong token/key.
    Invalid,
    /// The signature does not match.
    BadSignature,
    /// The signature's timestamp is outside the tolerance.
    Expired,
    /// A signed key sent plain, or the reverse.
    WrongMode,
    /// The same signed request was seen before within the tolerance window.
    Replayed,
    /// The credential may not reach this route or business.
    OutOfScope,
    /// The auth service could not be asked (down, slow, or a bad answer).
    Unavailable,
}

impl AuthReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [AuthReason; 9] = [
        AuthReason::Missing,
        AuthReason::Malformed,
        AuthReason::Invalid,
        AuthReason::BadSignature,
        AuthReason::Expired,
        AuthReason::WrongMode,
        AuthReason::Replayed,
        AuthReason::OutOfScope,
        AuthReason::Unavailable,
    ];

    /// The `result` label of a refusal for this reason: the service being unreachable is an
    /// error, anything else a denial.
    pub fn result(self) -> &'static str {
        if self == AuthReason::Unavailable {
            "error"
        } else {
            "denied"
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthReason::Missing => "missing",
            AuthReason::Malformed => "malformed",
            AuthReason::Invalid => "invalid",
            AuthReason::BadSignature => "bad_signature",
            AuthReason::Expired => "expired",
            AuthReason::WrongMode => "wrong_mode",
            AuthReason::Replayed => "replayed",
            AuthReason::OutOfScope => "out_of_scope",
            AuthReason::Unavailable => "unavailable",
        }
    }
}

/// A refusal: why (for metrics) and what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: AuthReason,
    pub error: ProxyError,
}

impl Denied {
    pub fn new(reason: AuthReason, message: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Denied {
            reason,
            error: ProxyError::unauthorized(message),
        }
    }
}

impl From<Denied> for ProxyError {
    fn from(d: Denied) -> Self {
        d.error
    }
}

/// What a credential may reach; `None` means no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Route names.
    pub routes: Option<Vec<String>>,
    /// Business ids (for callers whose requests name none, the business their credential or route
    /// maps to).
    pub businesses: Option<Vec<i64>>,
}

impl Scope {
    /// `scope` as a grant holds it: every unrestricted grant shares one (a grant carries a pointer,
    /// not the 48 bytes of two lists most credentials leave unset).
    pub fn shared(scope: Scope) -> Arc<Scope> {
        static OPEN: std::sync::OnceLock<Arc<Scope>> = std::sync::OnceLock::new();
        match scope == Scope::default() {
            true => OPEN.get_or_init(Arc::default).clone(),
            false => Arc::new(scope),
        }
    }

    /// Refuses (403) a route or business outside the scope.
    pub fn check(&self, route: &str, business_id: Option<i64>) -> Result<(), Denied> {
        let forbidden = |what: String| Denied {
            reason: AuthReason::OutOfScope,
            error: ProxyError::new(
                403,
                Reason::Forbidden,
                format!("this credential may not reach {what}"),
            ),
        };
        if let Some(routes) = &self.routes {
            if !routes.iter().any(|r| r == route) {
                return Err(forbidden(format!("route `{route}`")));
            }
        }
        if let Some(businesses) = &self.businesses {
            match business_id {
                Some(b) if businesses.contains(&b) => {}
                Some(b) => return Err(forbidden(format!("business {b}"))),
                None => return Err(forbidden("a route without a business".into())),
            }
        }
        Ok(())
    }
}

/// How an API key credential's requests are verified.
#[derive(Debug, Clone)]
pub enum ApiKeyAuth {
    /// `KEY|TS` with a signature, checked with this key's pre-keyed HMAC (boxed: 176 bytes that
    /// every other credential's grant would otherwise carry too).
    Signed(Box<HmacKey>),
    /// `KEY` alone.
    Plain,
}

/// An accepted credential: who the caller is and what it may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The credential's name, for logs.
    pub name: Arc<str>,
    /// The business its requests go to, when a route needs one and the caller's requests name none.
    pub business_id: Option<i64>,
    /// What it may reach.
    pub scope: Arc<Scope>,
    /// How its API key requests are verified (`None` for credentials of other kinds).
    pub api_key: Option<ApiKeyAuth>,
    /// Its own rate limits, and the id its rate limit buckets are keyed by.
    pub limits: CallerLimits,
    /// Where async mode may deliver its bot's replies and how they are signed (`None`: no async
    /// mode for this credential).
    pub callbacks: Option<Arc<CallbackPolicy>>,
    /// For a credential that covers the whole request (a signature over method, path, headers and
    /// body), its check, run once the body is read; `None` for credentials of the head alone.
    pub verifier: Option<Arc<dyn RequestVerifier>>,
    /// For a channel caller (whose conversations the proxy holds), the key its conversation tokens
    /// are signed with and the browser origins it may be used from.
    pub channel: Option<Arc<crate::session::ChannelGrant>>,
}

impl Grant {
    /// The grant of credential `name` before anything is added: no business, any route and
    /// business, no limits of its own, no async mode, no whole-request check. The dialect adds
    /// what is its own; the keys every caller table shares are added by [`ClientCredential::share`].
    pub fn named(name: &str) -> Grant {
        Grant {
            name: name.into(),
            business_id: None,
            scope: Scope::shared(Scope::default()),
            api_key: None,
            limits: CallerLimits::default(),
            callbacks: None,
            verifier: None,
            channel: None,
        }
    }
}

/// The keys every `[[clients.<dialect>]]` table shares, read once (by the shell) for every dialect.
#[derive(Debug, Clone, Default)]
pub struct SharedKeys {
    /// `business_id`: the business its requests go to, for callers whose requests name none.
    pub business_id: Option<i64>,
    /// `routes` and `businesses`: what it may reach.
    pub scope: Scope,
    /// `rate_limit` and `user_rate_limit`.
    pub limits: crate::limits::LimitPair,
}

/// A caller credential its dialect checks itself over the whole request, once the body is read
/// (AWS SigV4). The dialect that reads the credential implements it; the shell only calls it.
pub trait RequestVerifier: Send + Sync + fmt::Debug {
    /// Checks the request at `now` (unix seconds); the refusal is in the dialect's own words.
    fn verify(&self, req: &WholeRequest<'_>, now: u64) -> Result<(), Denied>;
}

/// One client allowed to call the proxy with its client id and bearer token.
#[derive(Debug, Clone)]
pub struct IdTokenClient {
    grant: Arc<Grant>,
    token_sha256: [u8; 32],
}

impl IdTokenClient {
    /// A client whose token is given in plain text (only its digest is kept).
    pub fn with_token(name: &str, token: &[u8]) -> Self {
        Self::with_token_sha256(name, Sha256::digest(token).into())
    }

    /// A client whose token is given as its SHA-256 digest.
    pub fn with_token_sha256(name: &str, token_sha256: [u8; 32]) -> Self {
        IdTokenClient {
            grant: Arc::new(Grant::named(name)),
            token_sha256,
        }
    }

    /// Restricts what the client may reach.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        Arc::make_mut(&mut self.grant).scope = Scope::shared(scope);
        self
    }

    /// Sets the client's rate limits.
    pub fn with_limits(mut self, limits: CallerLimits) -> Self {
        Arc::make_mut(&mut self.grant).limits = limits;
        self
    }

    /// Sets where its async replies go (its webhook).
    pub fn with_callbacks(mut self, callbacks: Option<CallbackPolicy>) -> Self {
        Arc::make_mut(&mut self.grant).callbacks = callbacks.map(Arc::new);
        self
    }
}

/// A client id and bearer token as a caller presented them.
#[derive(Clone, Copy)]
pub struct IdTokenPresented<'h> {
    /// The dialect that read them (the auth service's `dialect`).
    pub dialect: &'static str,
    pub client_id: &'h [u8],
    pub token: &'h [u8],
    /// The dialect's refusal of an id and token that do not match.
    pub invalid: &'static str,
}

impl fmt::Debug for IdTokenPresented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokenPresented")
            .field("dialect", &self.dialect)
            .field("client_id", &String::from_utf8_lossy(self.client_id))
            .field("token", &"<redacted>")
            .finish()
    }
}

impl IdTokenPresented<'_> {
    /// The cache key of this credential: a hash, never the token itself.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.dialect.as_bytes());
        h.update(b"\0");
        h.update(self.client_id);
        h.update(b"\0");
        h.update(self.token);
        h.finalize().into()
    }

    /// The refusal of these credentials, in their dialect's words.
    pub fn refused(&self) -> Denied {
        Denied::new(AuthReason::Invalid, self.invalid)
    }
}

/// The configured id-and-token clients, by client id.
#[derive(Debug, Clone, Default)]
pub struct IdTokenClients {
    /// foldhash, not std's SipHash: the map is fixed at load (no inserts an attacker controls),
    /// and SipHash's look-ups were about 500 instructions of a request (bench/RESULTS.md).
    by_id: HashMap<String, IdTokenClient, foldhash::fast::RandomState>,
}

impl IdTokenClients {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client; returns false if the client id was already taken.
    pub fn insert(&mut self, client_id: impl Into<String>, client: IdTokenClient) -> bool {
        self.by_id.insert(client_id.into(), client).is_none()
    }

    /// Whether no client is configured.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether this client id is configured here (else the auth service may know it).
    pub fn knows(&self, client_id: &[u8]) -> bool {
        std::str::from_utf8(client_id).is_ok_and(|id| self.by_id.contains_key(id))
    }

    /// Checks presented credentials against the configured clients.
    pub fn check(&self, p: &IdTokenPresented<'_>) -> Result<Arc<Grant>, Denied> {
        let digest: [u8; 32] = Sha256::digest(p.token).into();
        let found = std::str::from_utf8(p.client_id)
            .ok()
            .and_then(|id| self.by_id.get(id));
        // Compare against something even when the id is unknown, so timing does not tell.
        let expected = found.map_or(&[0u8; 32], |c| &c.token_sha256);
        let matches: bool = digest.ct_eq(expected).into();
        match found {
            Some(client) if matches => Ok(client.grant.clone()),
            _ => Err(p.refused()),
        }
    }
}

/// An API key as a caller presented it, plain (`KEY`) or signed (`KEY|TS` with a signature).
#[derive(Clone, Copy)]
pub struct ApiKeyPresented<'h> {
    /// The dialect that read it (the auth service's `dialect`).
    pub dialect: &'static str,
    /// The whole key header as sent.
    pub api_key: &'h [u8],
    /// The key part.
    pub key: &'h [u8],
    /// The timestamp, when the key was sent signed (`KEY|TS`).
    pub timestamp: Option<u64>,
    /// The signature header, if any.
    pub signature: Option<&'h [u8]>,
}

impl fmt::Debug for ApiKeyPresented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyPresented")
            .field("dialect", &self.dialect)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

impl ApiKeyPresented<'_> {
    /// The cache key of this credential: the SHA-256 of the key, never the key itself.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.key).into()
    }

    /// The replay-guard key of a signed request: `KEY|TS`, hashed. A verified signature is determined
    /// by it, so keying on the signature's text would only let a replay through in another hex case.
    pub fn replay_digest(&self) -> [u8; 32] {
        Sha256::digest(self.api_key).into()
    }
}

/// Verifies an API key request against the credential it claims, at `now` (unix seconds).
pub fn verify_api_key(
    grant: &Grant,
    p: &ApiKeyPresented<'_>,
    now: u64,
    tolerance_secs: u64,
) -> Result<(), Denied> {
    match (&grant.api_key, p.timestamp) {
        (Some(ApiKeyAuth::Signed(k)), Some(_)) => {
            k.verify(p.api_key, p.signature, now, tolerance_secs).map_err(|e| match e {
                SignatureError::MalformedKey | SignatureError::WrongKey => {
                    Denied::new(AuthReason::Invalid, MSG_INVALID_API_KEY)
                }
                SignatureError::MalformedSignature => Denied::new(
                    AuthReason::Malformed,
                    "missing or malformed x-api-signature header (sha256=<64 hex digits>)",
                ),
                SignatureError::BadSignature => Denied::new(AuthReason::BadSignature, "invalid signature"),
                SignatureError::Expired => Denied::new(
                    AuthReason::Expired,
                    format!("the x-api-key timestamp is more than {tolerance_secs} s from the server's clock"),
                ),
            })
        }
        (Some(ApiKeyAuth::Signed(_)), None) => Err(Denied::new(
            AuthReason::WrongMode,
            "this API key needs a signature: send x-api-key: KEY|TIMESTAMP and x-api-signature",
        )),
        (Some(ApiKeyAuth::Plain), None) => Ok(()),
        (Some(ApiKeyAuth::Plain), Some(_)) => Err(Denied::new(
            AuthReason::WrongMode,
            "this API key is not set up for signed requests: send x-api-key: KEY alone",
        )),
        (None, _) => Err(Denied::new(AuthReason::Invalid, MSG_INVALID_API_KEY)),
    }
}

/// The configured API key callers, by the SHA-256 of their key.
#[derive(Debug, Clone)]
pub struct ApiKeyClients {
    by_key_digest: HashMap<[u8; 32], Arc<Grant>>,
    tolerance_secs: u64,
}

impl ApiKeyClients {
    /// An empty set accepting timestamps within `tolerance_secs` of now.
    pub fn new(tolerance_secs: u64) -> Self {
        ApiKeyClients {
            by_key_digest: HashMap::new(),
            tolerance_secs,
        }
    }

    /// Adds a caller with API key `key`; returns false if the key was already taken.
    pub fn insert(&mut self, key: &str, grant: Grant) -> bool {
        self.by_key_digest
            .insert(Sha256::digest(key.as_bytes()).into(), Arc::new(grant))
            .is_none()
    }

    /// Whether no caller is configured.
    pub fn is_empty(&self) -> bool {
        self.by_key_digest.is_empty()
    }

    /// The timestamp tolerance, seconds either way.
    pub fn tolerance_secs(&self) -> u64 {
        self.tolerance_secs
    }

    /// The configured credential for presented credentials, if any (else the auth service may
    /// know it).
    pub fn lookup(&self, p: &ApiKeyPresented<'_>) -> Option<&Arc<Grant>> {
        self.by_digest(&p.digest())
    }

    /// The configured caller whose key has this digest ([`ApiKeyPresented::digest`]).
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Grant>> {
        self.by_key_digest.get(digest)
    }

    /// Verifies presented credentials against the configured callers at `now`.
    pub fn verify(&self, p: &ApiKeyPresented<'_>, now: u64) -> Result<Arc<Grant>, Denied> {
        let grant = self
            .lookup(p)
            .ok_or_else(|| Denied::new(AuthReason::Invalid, MSG_INVALID_API_KEY))?;
        verify_api_key(grant, p, now, self.tolerance_secs)?;
        Ok(grant.clone())
    }
}

/// A credential as a caller presented it, by kind. Each caller dialect reads its own from the request
/// head; several dialects may share a kind.
#[derive(Debug)]
pub enum Presented<'h> {
    /// A client id and a bearer token.
    ClientToken(IdTokenPresented<'h>),
    /// An API key, plain or signed.
    ApiKey(ApiKeyPresented<'h>),
    /// A bare token (a bearer token or a `?token=`), valid only for the dialect that presents it.
    Token(TokenPresented<'h>),
    /// The id of a key that signs the whole request (an AWS access key id), valid only for the
    /// dialect that presents it; the grant's [`RequestVerifier`] checks the signature.
    KeyId {
        dialect: &'static str,
        key_id: std::borrow::Cow<'h, str>,
    },
}

/// A bare token presented by a caller of `dialect`.
#[derive(Clone)]
pub struct TokenPresented<'h> {
    pub dialect: &'static str,
    pub token: std::borrow::Cow<'h, [u8]>,
}

impl fmt::Debug for TokenPresented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPresented")
            .field("dialect", &self.dialect)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TokenPresented<'_> {
    /// The lookup and cache key: the dialect and the token, hashed; never the token itself.
    pub fn digest(&self) -> [u8; 32] {
        token_digest(self.dialect, &self.token)
    }
}

/// The key a bare token is stored and cached under.
pub fn token_digest(dialect: &str, token: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(dialect.as_bytes());
    h.update(b"\0token\0");
    h.update(token);
    h.finalize().into()
}

/// The key a signing key's id (e.g. an AWS access key id) is stored under: in the same map as bare
/// tokens, in a domain of its own.
pub fn key_id_digest(dialect: &str, key_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(dialect.as_bytes());
    h.update(b"\0key-id\0");
    h.update(key_id.as_bytes());
    h.finalize().into()
}

/// A configured caller credential, by kind, as a dialect reads it from `[[clients.<dialect>]]`.
#[derive(Debug)]
pub enum ClientCredential {
    /// A client id with its token.
    ClientToken {
        client_id: String,
        client: IdTokenClient,
    },
    /// An API key.
    ApiKey { key: String, grant: Grant },
    /// A bare token, kept as [`token_digest`].
    Token { digest: [u8; 32], grant: Grant },
}

impl ClientCredential {
    /// Adds the keys every caller table shares, and the id the credential's rate limit buckets are
    /// keyed by: the same id the auth service's grants get for the same identity
    /// ([`AuthQuery::credential_id`]).
    pub fn share(mut self, shared: SharedKeys) -> Self {
        let id = match &self {
            ClientCredential::ClientToken { client_id, .. } => {
                credential_id("client-id", client_id.as_bytes())
            }
            ClientCredential::ApiKey { key, .. } => credential_id("api-key", key.as_bytes()),
            ClientCredential::Token { digest, .. } => credential_id("token", digest),
        };
        let grant = match &mut self {
            ClientCredential::ClientToken { client, .. } => Arc::make_mut(&mut client.grant),
            ClientCredential::ApiKey { grant, .. } | ClientCredential::Token { grant, .. } => grant,
        };
        grant.business_id = shared.business_id;
        grant.scope = Scope::shared(shared.scope);
        grant.limits = CallerLimits::new(id, shared.limits);
        self
    }

    /// The credential's callback settings, if it has any.
    pub fn callbacks(&self) -> Option<&Arc<CallbackPolicy>> {
        match self {
            ClientCredential::ClientToken { client, .. } => client.grant.callbacks.as_ref(),
            ClientCredential::ApiKey { grant, .. } | ClientCredential::Token { grant, .. } => {
                grant.callbacks.as_ref()
            }
        }
    }
}

/// The configured bare tokens of every dialect that uses them, by [`token_digest`].
#[derive(Debug, Clone, Default)]
pub struct TokenClients {
    by_digest: HashMap<[u8; 32], Arc<Grant>>,
}

impl TokenClients {
    /// Adds a token; false if it was already taken.
    pub fn insert(&mut self, digest: [u8; 32], grant: Grant) -> bool {
        self.by_digest.insert(digest, Arc::new(grant)).is_none()
    }

    /// The grant of a presented token. Found by the digest of the token, so the token itself is
    /// never compared byte by byte.
    pub fn lookup(&self, p: &TokenPresented<'_>) -> Option<&Arc<Grant>> {
        self.by_digest.get(&p.digest())
    }

    /// Every grant, for what the shell gathers from all of them (a channel's allowed origins).
    pub fn grants(&self) -> impl Iterator<Item = &Arc<Grant>> {
        self.by_digest.values()
    }

    /// The grant of a signing key's id ([`key_id_digest`]).
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Grant>> {
        self.by_digest.get(digest)
    }
}

/// Reads a bare token from `Authorization: Bearer <token>` or the query's `token=` parameter
/// (percent-decoded). Refuses a missing token with `message`.
pub fn token_presented<'h>(
    dialect: &'static str,
    authorization: Option<&'h [u8]>,
    query: Option<&'h str>,
) -> Result<TokenPresented<'h>, Denied> {
    let bearer = authorization.map(<[u8]>::trim_ascii).and_then(|v| {
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
    });
    let from_query = || {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    };
    let token = match bearer {
        Some(t) => std::borrow::Cow::Borrowed(t),
        None => std::borrow::Cow::Owned(from_query().unwrap_or_default()),
    };
    if token.is_empty() {
        return Err(Denied::new(
            AuthReason::Missing,
            "missing token: send ?token=<token> or Authorization: Bearer <token>",
        ));
    }
    Ok(TokenPresented { dialect, token })
}

/// `%XX` and `+` decoding of a query value; malformed escapes stay as they are.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Every configured caller credential, by kind.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_tokens: IdTokenClients,
    pub api_keys: ApiKeyClients,
    pub tokens: TokenClients,
}

/// What the proxy asks the auth service (`POST`, JSON). `Debug` hides the token and the key.
#[derive(Serialize)]
#[serde(untagged)]
pub enum AuthQuery<'a> {
    /// `{"dialect":"<name>","client_id":"…","token":"…"}`: a client id with its token.
    IdToken {
        dialect: &'static str,
        client_id: &'a str,
        token: &'a str,
    },
    /// `{"dialect":"<name>","key":"…"}`: an API key.
    ApiKey { dialect: &'static str, key: &'a str },
    /// `{"dialect":"<name>","token":"…"}`: a bare token of a dialect that uses one.
    Token {
        dialect: &'static str,
        token: &'a str,
    },
}

impl fmt::Debug for AuthQuery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthQuery::IdToken {
                dialect, client_id, ..
            } => f
                .debug_struct("IdToken")
                .field("dialect", dialect)
                .field("client_id", client_id)
                .field("token", &"<redacted>")
                .finish(),
            AuthQuery::ApiKey { dialect, .. } => f
                .debug_struct("ApiKey")
                .field("dialect", dialect)
                .field("key", &"<redacted>")
                .finish(),
            AuthQuery::Token { dialect, .. } => f
                .debug_struct("Token")
                .field("dialect", dialect)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

impl<'a> AuthQuery<'a> {
    /// The query for a client id and token (`None` if they are not UTF-8, which no service knows).
    pub fn id_token(p: &IdTokenPresented<'a>) -> Option<Self> {
        Some(AuthQuery::IdToken {
            dialect: p.dialect,
            client_id: std::str::from_utf8(p.client_id).ok()?,
            token: std::str::from_utf8(p.token).ok()?,
        })
    }

    /// The query for an API key.
    pub fn api_key(p: &ApiKeyPresented<'a>) -> Option<Self> {
        Some(AuthQuery::ApiKey {
            dialect: p.dialect,
            key: std::str::from_utf8(p.key).ok()?,
        })
    }

    /// The rate limit id of the credential asked about: the same as the one a configured credential
    /// of the same identity gets (`config::clients`).
    pub fn credential_id(&self) -> crate::limits::CredentialId {
        match self {
            AuthQuery::IdToken { client_id, .. } => {
                credential_id("client-id", client_id.as_bytes())
            }
            AuthQuery::ApiKey { key, .. } => credential_id("api-key", key.as_bytes()),
            AuthQuery::Token { dialect, token } => {
                credential_id("token", &token_digest(dialect, token.as_bytes()))
            }
        }
    }

    /// The query for a bare token of `dialect`.
    pub fn token(dialect: &'static str, token: &'a [u8]) -> Option<Self> {
        Some(AuthQuery::Token {
            dialect,
            token: std::str::from_utf8(token).ok()?,
        })
    }
}

/// What the auth service answers (HTTP 200, JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthVerdict {
    /// Whether the credential is valid.
    pub valid: bool,
    /// A name for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// API keys: `signed` (give `secret`) or `plain`.
    #[serde(default)]
    pub auth: Option<String>,
    /// API keys, signed: the API secret, so the proxy checks the signature itself.
    #[serde(default)]
    pub secret: Option<String>,
    /// The business the caller's requests go to.
    #[serde(default)]
    pub business_id: Option<i64>,
    /// Route names the credential may reach (absent: any).
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Business ids the credential may reach (absent: any).
    #[serde(default)]
    pub businesses: Option<Vec<i64>>,
}

/// Turns a verdict into a grant (`Ok(None)`: the credential is not valid). `Err` means the verdict
/// itself is unusable, which is an auth service failure, not a refusal.
pub fn grant_from_verdict(query: &AuthQuery<'_>, v: AuthVerdict) -> Result<Option<Grant>, String> {
    if !v.valid {
        return Ok(None);
    }
    let api_key = match query {
        AuthQuery::IdToken { .. } | AuthQuery::Token { .. } => None,
        AuthQuery::ApiKey { key, .. } => {
            Some(match (v.auth.as_deref().unwrap_or("signed"), v.secret) {
                ("signed", Some(secret)) if !secret.is_empty() => {
                    ApiKeyAuth::Signed(Box::new(HmacKey::new(*key, secret.as_bytes())))
                }
                ("signed", _) => {
                    return Err("a valid signed API key needs a non-empty `secret`".into())
                }
                ("plain", _) => ApiKeyAuth::Plain,
                (other, _) => {
                    return Err(format!("`auth` must be `signed` or `plain`, not `{other}`"))
                }
            })
        }
    };
    Ok(Some(Grant {
        name: v.name.unwrap_or_else(|| "auth-service".into()).into(),
        business_id: v.business_id,
        scope: Scope::shared(Scope {
            routes: v.routes,
            businesses: v.businesses,
        }),
        api_key,
        limits: CallerLimits::new(query.credential_id(), Default::default()),
        callbacks: None,
        verifier: None,
        channel: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::csml::presented as csml_presented;
    use crate::dialect::haptik::presented as haptik_presented;
    use crate::dialect::haptik::{MSG_CLIENT_ID_MISSING, MSG_INVALID, MSG_TOKEN_MISSING};

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn csml() -> ApiKeyClients {
        let mut c = ApiKeyClients::new(300);
        c.insert(
            "signed-key",
            Grant {
                name: "s".into(),
                business_id: Some(7),
                scope: Scope::shared(Scope::default()),
                api_key: Some(ApiKeyAuth::Signed(Box::new(HmacKey::new(
                    "signed-key",
                    b"secret",
                )))),
                limits: CallerLimits::default(),
                callbacks: None,
                verifier: None,
                channel: None,
            },
        );
        c.insert(
            "plain-key",
            Grant {
                name: "p".into(),
                business_id: None,
                scope: Scope::shared(Scope::default()),
                api_key: Some(ApiKeyAuth::Plain),
                limits: CallerLimits::default(),
                callbacks: None,
                verifier: None,
                channel: None,
            },
        );
        c
    }

    #[test]
    fn csml_signed_and_plain_credentials() {
        let c = csml();
        let s = HmacKey::new("signed-key", b"secret").sign(1000);
        let v = |key: &str, sig: Option<&str>, now| {
            let mut h = vec![("x-api-key", key)];
            h.extend(sig.map(|s| ("x-api-signature", s)));
            c.verify(&csml_presented(headers(&h))?, now)
        };
        assert_eq!(
            v(&s.api_key, Some(&s.signature), 1000).unwrap().business_id,
            Some(7)
        );
        assert_eq!(
            &*v(&s.api_key, Some(&s.signature), 1300).unwrap().name,
            "s",
            "exactly at the tolerance"
        );
        assert_eq!(
            &*v(&s.api_key, Some(&s.signature), 700).unwrap().name,
            "s",
            "from the future, at the tolerance"
        );
        let why = |r: Result<Arc<Grant>, Denied>| {
            let d = r.unwrap_err();
            (d.reason, d.error.message.into_owned())
        };
        assert_eq!(
            why(v(&s.api_key, Some(&s.signature), 1301)).0,
            AuthReason::Expired
        );
        assert!(why(v(&s.api_key, Some(&s.signature), 699))
            .1
            .contains("more than 300 s"));
        let other = HmacKey::new("signed-key", b"wrong").sign(1000);
        assert_eq!(
            why(v(&s.api_key, Some(&other.signature), 1000)),
            (AuthReason::BadSignature, "invalid signature".into())
        );
        assert_eq!(why(v(&s.api_key, None, 1000)).0, AuthReason::Malformed);
        assert_eq!(
            why(v("nobody|1000", Some(&s.signature), 1000)),
            (AuthReason::Invalid, "invalid API key".into())
        );
        assert_eq!(why(v("signed-key", None, 1000)).0, AuthReason::WrongMode);
        assert_eq!(&*v("plain-key", None, 0).unwrap().name, "p");
        assert_eq!(
            why(v("plain-key|1000", Some(&s.signature), 1000)).0,
            AuthReason::WrongMode
        );
        assert_eq!(why(v("wrong-key", None, 0)).0, AuthReason::Invalid);
        assert_eq!(
            why(csml_presented(headers(&[])).and_then(|p| c.verify(&p, 0))),
            (AuthReason::Missing, "missing x-api-key header".into())
        );
    }

    fn clients() -> IdTokenClients {
        let mut c = IdTokenClients::new();
        c.insert(
            "demo-client",
            IdTokenClient::with_token("demo", b"demo-token"),
        );
        c.insert(
            "hashed",
            IdTokenClient::with_token_sha256("h", Sha256::digest(b"t2").into()),
        );
        c
    }

    #[test]
    fn accepts_the_right_token_for_the_client() {
        let c = clients();
        let ok = |auth: &str, id_header: &str, id: &str| {
            let h = [("authorization", auth), (id_header, id)];
            c.check(&haptik_presented(headers(&h)).unwrap())
                .unwrap()
                .name
                .to_string()
        };
        assert_eq!(ok("Bearer demo-token", "client-id", "demo-client"), "demo");
        assert_eq!(ok("bearer  t2 ", "client-id", "hashed"), "h");
        assert_eq!(
            ok("Bearer t2", "client_id", "hashed"),
            "h",
            "the underscore spelling"
        );
    }

    #[test]
    fn refuses_with_haptiks_messages() {
        let c = clients();
        let msg = |pairs: &[(&str, &str)]| {
            let d = haptik_presented(headers(pairs))
                .and_then(|p| c.check(&p))
                .unwrap_err();
            assert_eq!(d.error.status, 401);
            (d.reason, d.error.message.into_owned())
        };
        use AuthReason::*;
        assert_eq!(
            msg(&[("authorization", "Bearer demo-token")]),
            (Missing, MSG_CLIENT_ID_MISSING.into())
        );
        assert_eq!(
            msg(&[("authorization", "Bearer demo-token"), ("client-id", " ")]).1,
            MSG_CLIENT_ID_MISSING
        );
        assert_eq!(
            msg(&[("client-id", "demo-client")]),
            (Missing, MSG_TOKEN_MISSING.into())
        );
        assert_eq!(
            msg(&[("authorization", "Bearer "), ("client-id", "demo-client")]).1,
            MSG_TOKEN_MISSING
        );
        assert_eq!(
            msg(&[("authorization", "Basic abc"), ("client-id", "demo-client")]),
            (Malformed, MSG_INVALID.into())
        );
        assert_eq!(
            msg(&[
                ("authorization", "Bearer wrong"),
                ("client-id", "demo-client")
            ]),
            (Invalid, MSG_INVALID.into())
        );
        assert_eq!(
            msg(&[
                ("authorization", "Bearer demo-token"),
                ("client-id", "nobody")
            ])
            .1,
            MSG_INVALID
        );
        // One client's token does not open another client.
        assert_eq!(
            msg(&[("authorization", "Bearer t2"), ("client-id", "demo-client")]).1,
            MSG_INVALID
        );
    }

    #[test]
    fn scopes_limit_routes_and_businesses() {
        let open = Scope::default();
        assert!(open.check("any", None).is_ok());
        let s = Scope {
            routes: Some(vec!["chat".into()]),
            businesses: Some(vec![343]),
        };
        assert!(s.check("chat", Some(343)).is_ok());
        let d = s.check("other", Some(343)).unwrap_err();
        assert_eq!((d.reason, d.error.status), (AuthReason::OutOfScope, 403));
        assert!(d.error.message.contains("route `other`"));
        assert!(s
            .check("chat", Some(1))
            .unwrap_err()
            .error
            .message
            .contains("business 1"));
        assert!(s.check("chat", None).is_err());
    }

    #[test]
    fn auth_service_contract() {
        let q = AuthQuery::IdToken {
            dialect: "haptik",
            client_id: "c",
            token: "t",
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"dialect":"haptik","client_id":"c","token":"t"})
        );
        let q = AuthQuery::ApiKey {
            dialect: "csml",
            key: "k",
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"dialect":"csml","key":"k"})
        );
        let verdict = |s: &str| serde_json::from_str::<AuthVerdict>(s).unwrap();
        let g = grant_from_verdict(
            &q,
            verdict(
                r#"{"valid":true,"name":"acme","secret":"s","business_id":3,"routes":["chat"]}"#,
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!((&*g.name, g.business_id), ("acme", Some(3)));
        assert!(matches!(g.api_key, Some(ApiKeyAuth::Signed(_))));
        assert_eq!(g.scope.routes.as_deref(), Some(&["chat".to_string()][..]));
        assert!(grant_from_verdict(&q, verdict(r#"{"valid":false}"#))
            .unwrap()
            .is_none());
        assert!(
            grant_from_verdict(&q, verdict(r#"{"valid":true}"#)).is_err(),
            "signed without a secret"
        );
        assert!(matches!(
            grant_from_verdict(&q, verdict(r#"{"valid":true,"auth":"plain"}"#))
                .unwrap()
                .unwrap()
                .api_key,
            Some(ApiKeyAuth::Plain)
        ));
        assert!(serde_json::from_str::<AuthVerdict>(r#"{"valid":true,"extra":1}"#).is_err());
    }

    /// From the `auth_headers` fuzz target: the header is trimmed, the key before `|TS` is taken as
    /// sent, so `k |1700000000` presents the key `k ` (which no credential has), never `k`.
    #[test]
    fn the_key_before_the_timestamp_is_taken_as_sent() {
        let h = [("x-api-key", " demo-key |1700000000 ")];
        let c = csml_presented(headers(&h)).unwrap();
        assert_eq!(c.api_key, b"demo-key |1700000000");
        assert_eq!(c.key, b"demo-key ");
        assert_eq!(c.timestamp, Some(1_700_000_000));
        let k = HmacKey::new("demo-key", b"s");
        let signed = k.sign(1_700_000_000);
        assert_eq!(
            k.verify(
                c.api_key,
                Some(signed.signature.as_bytes()),
                1_700_000_000,
                300
            ),
            Err(SignatureError::WrongKey)
        );
    }

    #[test]
    fn presented_credentials_never_print_secrets() {
        let p = IdTokenPresented {
            dialect: "haptik",
            client_id: b"c",
            token: b"tok-secret",
            invalid: MSG_INVALID,
        };
        assert!(!format!("{p:?}").contains("tok-secret"));
        let h = [("x-api-key", "plain-secret-key")];
        let c = csml_presented(headers(&h)).unwrap();
        assert!(!format!("{c:?}").contains("plain-secret-key"));
        assert_ne!(c.digest(), [0; 32]);
    }
}
