//! Auth tokens, as etcd's `--auth-token` chooses them.
//!
//! - `simple` (the default): a random prefix and the raft index of the Authenticate entry. The entry
//!   is applied on every member, so every member accepts the token; it lives in memory only (a
//!   restart forgets it) and expires after `--auth-token-ttl` without use.
//! - `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m`: a signed token naming the user and the
//!   auth revision it was issued at; any member with the public key verifies it, nothing is stored.
//!   Unlike etcd, a member signing tokens with RSA/PS/ES keys needs the public key file as well.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keel_state::auth::{TokenInfo, TokenIssuer};
use parking_lot::Mutex;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};

/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Length of a simple token's random part (etcd's defaultSimpleTokenLength).
const SIMPLE_PREFIX_LEN: usize = 16;

/// How tokens are issued and checked.
pub struct Tokens {
    kind: Kind,
}

enum Kind {
    Simple {
        ttl: Duration,
        live: Mutex<HashMap<String, SimpleToken>>,
    },
    Jwt(Jwt),
}

struct SimpleToken {
    user: String,
    expires: Instant,
}

struct Jwt {
    algorithm: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl Tokens {
    /// Simple tokens that expire after `ttl` without use.
    pub fn simple(ttl: Duration) -> Tokens {
        Tokens {
            kind: Kind::Simple {
                ttl,
                live: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Tokens as `--auth-token` names them (`simple`, or `jwt,` and its options); `simple_ttl`
    /// is `--auth-token-ttl`.
    pub fn from_flag(spec: &str, simple_ttl: Duration) -> Result<Tokens, String> {
        let mut parts = spec.split(',');
        match parts.next().unwrap_or_default() {
            "simple" => Ok(Tokens::simple(simple_ttl)),
            "jwt" => {
                let mut opts = HashMap::new();
                for p in parts {
                    let (k, v) = p
                        .split_once('=')
                        .ok_or_else(|| format!("auth: invalid auth options: {p:?}"))?;
                    if opts.insert(k, v).is_some() {
                        return Err(format!("auth: invalid auth options: {k} given twice"));
                    }
                }
                Ok(Tokens {
                    kind: Kind::Jwt(Jwt::from_options(&opts)?),
                })
            }
            other => Err(format!("auth: unknown token type {other:?}")),
        }
    }

    /// A fresh random prefix for a simple token.
    pub fn new_prefix() -> String {
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(SIMPLE_PREFIX_LEN)
            .map(char::from)
            .collect()
    }
}

impl TokenIssuer for Tokens {
    /// Whether tokens are JWTs (issued by the member that checked the password, no proposal).
    fn is_jwt(&self) -> bool {
        matches!(self.kind, Kind::Jwt(_))
    }

    /// Records the simple token of an applied Authenticate entry and returns it.
    fn assign_simple(&self, user: &str, prefix: &str, index: u64) -> String {
        let token = format!("{prefix}.{index}");
        if let Kind::Simple { ttl, live } = &self.kind {
            let now = Instant::now();
            let mut live = live.lock();
            // Expired tokens go when new ones come, so the map never grows past the live ones.
            live.retain(|_, t| t.expires > now);
            live.insert(
                token.clone(),
                SimpleToken {
                    user: user.to_string(),
                    expires: now + *ttl,
                },
            );
        }
        token
    }

    /// A signed JWT for `user` at auth revision `revision`.
    fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Kind::Jwt(jwt) = &self.kind else {
            return Err("auth: not a JWT token provider".into());
        };
        let key = jwt
            .sign
            .as_ref()
            .ok_or("auth: token signing attempted with verify-only key")?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + jwt.ttl;
        let claims = json!({"username": user, "revision": revision, "exp": exp.as_secs()});
        jsonwebtoken::encode(&Header::new(jwt.algorithm), &claims, key).map_err(|e| e.to_string())
    }

    /// Who `token` names, if it is valid (a simple token's lifetime starts again).
    fn identify(&self, token: &str) -> Option<TokenInfo> {
        match &self.kind {
            Kind::Simple { ttl, live } => {
                let now = Instant::now();
                let mut live = live.lock();
                let t = live.get_mut(token).filter(|t| t.expires > now)?;
                t.expires = now + *ttl;
                Some(TokenInfo {
                    user: t.user.clone(),
                    revision: None,
                })
            }
            Kind::Jwt(jwt) => {
                let mut v = Validation::new(jwt.algorithm);
                v.leeway = 0;
                v.required_spec_claims = ["exp".to_string()].into();
                let claims = jsonwebtoken::decode::<Value>(token, &jwt.verify, &v)
                    .ok()?
                    .claims;
                Some(TokenInfo {
                    user: claims.get("username")?.as_str()?.to_string(),
                    revision: Some(claims.get("revision")?.as_u64()?),
                })
            }
        }
    }

    /// Forgets every simple token of `user` (deleted, or its password changed).
    fn invalidate_user(&self, user: &str) {
        if let Kind::Simple { live, .. } = &self.kind {
            live.lock().retain(|_, t| t.user != user);
        }
    }

    /// Forgets every simple token (auth disabled).
    fn clear(&self) {
        if let Kind::Simple { live, .. } = &self.kind {
            live.lock().clear();
        }
    }
}

impl Jwt {
    fn from_options(opts: &HashMap<&str, &str>) -> Result<Jwt, String> {
        let method = opts.get("sign-method").copied().unwrap_or_default();
        let algorithm = Algorithm::from_str(method)
            .map_err(|_| format!("auth: invalid auth signature method {method:?}"))?;
        let ttl = match opts.get("ttl") {
            Some(t) => humantime::parse_duration(t).map_err(|e| format!("auth: ttl: {e}"))?,
            None => DEFAULT_JWT_TTL,
        };
        let read = |opt: &str| -> Result<Option<Vec<u8>>, String> {
            opts.get(opt)
                .map(|f| std::fs::read(f).map_err(|e| format!("auth: {opt} {f}: {e}")))
                .transpose()
        };
        let (private, public) = (read("priv-key")?, read("pub-key")?);
        let bad = |e: jsonwebtoken::errors::Error| format!("auth: key: {e}");
        use Algorithm::*;
        let (sign, verify) = match algorithm {
            HS256 | HS384 | HS512 => {
                let secret = private.ok_or("auth: missing key data (priv-key)")?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let public = public.ok_or("auth: missing key data (pub-key)")?;
                let sign = private
                    .map(|p| EncodingKey::from_rsa_pem(&p).map_err(bad))
                    .transpose()?;
                (sign, DecodingKey::from_rsa_pem(&public).map_err(bad)?)
            }
            ES256 | ES384 => {
                let public = public.ok_or("auth: missing key data (pub-key)")?;
                let sign = private
                    .map(|p| EncodingKey::from_ec_pem(&p).map_err(bad))
                    .transpose()?;
                (sign, DecodingKey::from_ec_pem(&public).map_err(bad)?)
            }
            EdDSA => return Err("auth: invalid auth signature method EdDSA".into()),
        };
        Ok(Jwt {
            algorithm,
            sign,
            verify,
            ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_unused_and_go_with_their_user() {
        let t = Tokens::simple(Duration::from_millis(200));
        let a = t.assign_simple("alice", &Tokens::new_prefix(), 7);
        assert!(a.ends_with(".7"));
        assert_eq!(t.identify(&a).map(|i| i.user).as_deref(), Some("alice"));
        assert!(t.identify("nope.7").is_none());
        std::thread::sleep(Duration::from_millis(300));
        assert!(t.identify(&a).is_none(), "expired");
        let b = t.assign_simple("bob", "p", 8);
        t.invalidate_user("bob");
        assert!(t.identify(&b).is_none());
    }

    #[test]
    fn jwt_tokens_carry_user_and_revision_and_need_the_right_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"0123456789abcdef").unwrap();
        let spec = format!("jwt,priv-key={},sign-method=HS256", secret.display());
        let t = Tokens::from_flag(&spec, Duration::ZERO).unwrap();
        let token = t.sign("alice", 5).unwrap();
        let info = t.identify(&token).unwrap();
        assert_eq!((info.user.as_str(), info.revision), ("alice", Some(5)));
        std::fs::write(&secret, b"another secret!!").unwrap();
        let other = Tokens::from_flag(&spec, Duration::ZERO).unwrap();
        assert!(other.identify(&token).is_none(), "signed with another key");
        assert!(Tokens::from_flag("jwt,sign-method=HS256", Duration::ZERO).is_err());
        assert!(Tokens::from_flag("jwt,sign-method=XX1", Duration::ZERO).is_err());
        assert!(Tokens::from_flag("nonsense", Duration::ZERO).is_err());
    }
}
