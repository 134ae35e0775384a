//! Accounts (merchants, sellers) and their API keys, and who a request comes from.
//!
//! A key is `sk_test_` + 64 hex digits of 32 bytes from the operating system's CSPRNG. Only its
//! SHA-256 is stored: a key has 256 bits of entropy, so a fast hash is as safe as a slow one
//! here (nothing to brute-force), and it lets every request be checked with one GET. Nothing is
//! cached, so a revoked key stops working on every replica with the next request.
//!
//! Keys, all in one slot (`{accounts}`) so that issuing and revoking are one script each:
//! - `acct:{accounts}:account:<accountId>` hash: name, createdAt
//! - `acct:{accounts}:keys:<accountId>` hash: keyId → the key's hash
//! - `acct:{accounts}:key:<hash>`: `<accountId> <keyId>`, the lookup a request makes
//!
//! Every service that takes API keys reads the same keys: they share the Redis of the platform.

use std::fmt;
use std::sync::LazyLock;

use actix_web::HttpRequest;
use redis::AsyncCommands;

use crate::lua::Script;
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::problem::CommonError;
use crate::redis_pool::Pool;

static ISSUE: LazyLock<Script> = LazyLock::new(|| crate::lua::script(&[], include_str!("issue_key.lua")));
static REVOKE: LazyLock<Script> = LazyLock::new(|| crate::lua::script(&[], include_str!("revoke_key.lua")));

const KEY_PREFIX: &str = "sk_test_";
const LOOKUP_PREFIX: &str = "acct:{accounts}:key:";

fn account_key(id: &str) -> String {
    format!("acct:{{accounts}}:account:{id}")
}
fn keys_key(id: &str) -> String {
    format!("acct:{{accounts}}:keys:{id}")
}

/// An account's id: `acct_` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Only ids of the form this module makes: anything else names no account.
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("acct_")?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| Self(raw.to_string()))
    }

    /// The account a request's Idempotency-Key creates: the same for every retry of it.
    pub fn derived(seed: &str) -> Self {
        Self(format!("acct_{}", crate::idempotency::short_digest(seed, 16)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An API key's id (`key_` and 32 hex digits): what lists show and revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("key_")?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| Self(raw.to_string()))
    }

    pub fn derived(seed: &str) -> Self {
        Self(format!("key_{}", crate::idempotency::short_digest(seed, 16)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A secret API key. Its `Debug` hides it, so it cannot reach a log by accident.
pub struct ApiKey(String);

impl ApiKey {
    /// 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CommonError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| CommonError::Internal(format!("no randomness for a key: {e}")))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(format!("{KEY_PREFIX}{hex}")))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

/// What is stored of a key: its SHA-256, hex.
fn hash_of(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The internal token: the platform, allowed everything.
    Platform,
    Account(AccountId),
}

impl Caller {
    /// The platform, or the account that owns the resource; 403 for any other account. A
    /// resource without an owner is the platform's.
    pub fn may_act_for(&self, owner: Option<&str>) -> Result<(), CommonError> {
        match (self, owner) {
            (Self::Platform, _) => Ok(()),
            (Self::Account(me), Some(owner)) if me.as_str() == owner => Ok(()),
            (Self::Account(_), Some(_)) => Err(CommonError::Forbidden(
                "this resource belongs to another account".into(),
            )),
            (Self::Account(_), None) => Err(CommonError::Forbidden(
                "this resource belongs to the platform; only the internal token may change it".into(),
            )),
        }
    }

    /// Only the platform: 403 for an account.
    pub fn platform_only(&self) -> Result<(), CommonError> {
        match self {
            Self::Platform => Ok(()),
            Self::Account(_) => Err(CommonError::Forbidden(
                "only the platform (internal token) may do this".into(),
            )),
        }
    }

    /// Where an Idempotency-Key is kept: each caller has its own keys, as at Stripe.
    pub fn scope(&self, endpoint: &str) -> String {
        match self {
            Self::Platform => endpoint.to_string(),
            Self::Account(id) => format!("{endpoint}:{id}"),
        }
    }
}

/// The accounts and keys in Redis.
#[derive(Clone)]
pub struct Accounts {
    pool: Pool,
    token: Secret,
}

/// An account as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created_at: String,
    /// Its live keys' ids, sorted.
    pub key_ids: Vec<String>,
}

impl Accounts {
    pub fn new(pool: Pool, token: Secret) -> Self {
        Self { pool, token }
    }

    /// Who sent `req`: the internal token is the platform; an `sk_test_` key its account; no
    /// bearer, or one that is neither, 401. The key is compared by its hash, looked up in
    /// Redis; the token in constant time.
    pub async fn caller(&self, req: &HttpRequest) -> Result<Caller, CommonError> {
        let presented = crate::auth::bearer(req)?;
        if crate::auth::constant_time_eq(presented.as_bytes(), self.token.expose().as_bytes()) {
            return Ok(Caller::Platform);
        }
        if !presented.starts_with(KEY_PREFIX) || presented.len() > 128 {
            return Err(CommonError::Unauthorized);
        }
        let mut conn = self.pool.get().await?;
        let found: Option<String> = conn.get(format!("{LOOKUP_PREFIX}{}", hash_of(presented))).await?;
        let account = found
            .as_deref()
            .and_then(|v| v.split(' ').next())
            .and_then(AccountId::parse)
            .ok_or(CommonError::Unauthorized)?;
        Ok(Caller::Account(account))
    }

    /// Creates the account `id` (derived from the request's key) with its first key `key_id`.
    pub async fn create(&self, id: &AccountId, name: &str, key_id: &KeyId) -> Result<ApiKey, CommonError> {
        let key = ApiKey::generate()?;
        self.issue_as("create", id, name, key_id, &key).await?;
        Ok(key)
    }

    /// Issues another key to `id`; `None` when there is no such account.
    pub async fn issue(&self, id: &AccountId, key_id: &KeyId) -> Result<Option<ApiKey>, CommonError> {
        let key = ApiKey::generate()?;
        Ok(self.issue_as("issue", id, "", key_id, &key).await?.then_some(key))
    }

    async fn issue_as(
        &self,
        mode: &str,
        id: &AccountId,
        name: &str,
        key_id: &KeyId,
        key: &ApiKey,
    ) -> Result<bool, CommonError> {
        let hash = hash_of(key.expose());
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = ISSUE
            .key(account_key(id.as_str()))
            .key(keys_key(id.as_str()))
            .key(format!("{LOOKUP_PREFIX}{hash}"))
            .arg(mode)
            .arg(name)
            .arg(crate::time::now_rfc3339())
            .arg(key_id.as_str())
            .arg(&hash)
            .arg(id.as_str())
            .arg(LOOKUP_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        Ok(reply.first().map(String::as_str) == Some("issued"))
    }

    /// Revokes `key_id` of `id`; false when it names no live key of that account.
    pub async fn revoke(&self, id: &AccountId, key_id: &KeyId) -> Result<bool, CommonError> {
        let mut conn = self.pool.get().await?;
        let revoked: i64 = REVOKE
            .key(keys_key(id.as_str()))
            .arg(key_id.as_str())
            .arg(LOOKUP_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        Ok(revoked == 1)
    }

    pub async fn get(&self, id: &AccountId) -> Result<Option<Account>, CommonError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(account_key(id.as_str()))
            .arg(&["name", "createdAt"])
            .query_async(&mut conn)
            .await?;
        let [Some(name), created_at] = <[Option<String>; 2]>::try_from(fields).unwrap_or_default() else {
            return Ok(None);
        };
        let mut key_ids: Vec<String> = conn.hkeys(keys_key(id.as_str())).await?;
        key_ids.sort();
        Ok(Some(Account {
            id: id.clone(),
            name,
            created_at: created_at.unwrap_or_default(),
            key_ids,
        }))
    }

    pub async fn exists(&self, id: &AccountId) -> Result<bool, CommonError> {
        let mut conn = self.pool.get().await?;
        Ok(conn.exists(account_key(id.as_str())).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hidden_from_debug() {
        let (a, b) = (ApiKey::generate().expect("key"), ApiKey::generate().expect("key"));
        assert!(a.expose().starts_with("sk_test_") && a.expose().len() == 8 + 64);
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(&a.expose()[8..]));
        assert_eq!(hash_of(a.expose()).len(), 64);
        assert_ne!(hash_of(a.expose()), a.expose());
    }

    #[test]
    fn ids_parse_only_in_the_form_made_here() {
        let id = AccountId::derived("idem:{x}");
        assert_eq!(AccountId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(AccountId::derived("idem:{x}"), id, "a retry derives the same account");
        for bad in [
            "",
            "acct_",
            "acct_XYZ",
            "acct_0123",
            "key_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(AccountId::parse(bad), None, "{bad}");
        }
        let key = KeyId::derived("k");
        assert_eq!(KeyId::parse(key.as_str()), Some(key));
    }

    #[test]
    fn only_the_owner_or_the_platform_may_act() {
        let me = Caller::Account(AccountId::derived("me"));
        let mine = AccountId::derived("me");
        assert!(Caller::Platform.may_act_for(None).is_ok());
        assert!(Caller::Platform.may_act_for(Some("acct_x")).is_ok());
        assert!(me.may_act_for(Some(mine.as_str())).is_ok());
        assert!(matches!(
            me.may_act_for(Some("acct_other")),
            Err(CommonError::Forbidden(_))
        ));
        assert!(matches!(me.may_act_for(None), Err(CommonError::Forbidden(_))));
        assert!(matches!(me.platform_only(), Err(CommonError::Forbidden(_))));
        assert_ne!(me.scope("payment:splits"), Caller::Platform.scope("payment:splits"));
    }
}

#[cfg(test)]
mod script_tests {
    //! issue_key.lua and revoke_key.lua against a real Redis, through [`Accounts::caller`].

    use actix_web::test::TestRequest;

    use super::*;
    use crate::testing::TestRedis;

    fn bearer(key: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header(("authorization", format!("Bearer {key}")))
            .to_http_request()
    }

    #[tokio::test]
    async fn an_issued_key_identifies_its_account_until_revoked() {
        let redis = TestRedis::start().await;
        let accounts = Accounts::new(redis.pool(), Secret::new("internal"));
        let id = AccountId::derived("a");
        let first = KeyId::derived("a:1");
        let key = accounts.create(&id, "Acme", &first).await.expect("create");
        assert_eq!(
            accounts.caller(&bearer(key.expose())).await.ok(),
            Some(Caller::Account(id.clone()))
        );
        assert_eq!(accounts.caller(&bearer("internal")).await.ok(), Some(Caller::Platform));
        for bad in ["sk_test_nope", "internal2", ""] {
            assert!(
                matches!(accounts.caller(&bearer(bad)).await, Err(CommonError::Unauthorized)),
                "{bad}"
            );
        }

        let second = KeyId::derived("a:2");
        let other = accounts
            .issue(&id, &second)
            .await
            .expect("issue")
            .expect("the account exists");
        let account = accounts.get(&id).await.expect("get").expect("found");
        assert_eq!(account.name, "Acme");
        assert_eq!(account.key_ids.len(), 2);

        assert!(accounts.revoke(&id, &first).await.expect("revoke"));
        assert!(
            !accounts.revoke(&id, &first).await.expect("revoke again"),
            "already revoked"
        );
        assert!(matches!(
            accounts.caller(&bearer(key.expose())).await,
            Err(CommonError::Unauthorized)
        ));
        assert_eq!(
            accounts.caller(&bearer(other.expose())).await.ok(),
            Some(Caller::Account(id.clone()))
        );
        assert!(
            accounts
                .issue(&AccountId::derived("none"), &second)
                .await
                .expect("issue")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_retried_creation_replaces_the_key_nobody_saw() {
        let redis = TestRedis::start().await;
        let accounts = Accounts::new(redis.pool(), Secret::new("internal"));
        let id = AccountId::derived("retry");
        let key_id = KeyId::derived("retry:1");
        let lost = accounts.create(&id, "Acme", &key_id).await.expect("create");
        let seen = accounts.create(&id, "Acme", &key_id).await.expect("create again");
        assert!(matches!(
            accounts.caller(&bearer(lost.expose())).await,
            Err(CommonError::Unauthorized)
        ));
        assert_eq!(
            accounts.caller(&bearer(seen.expose())).await.ok(),
            Some(Caller::Account(id.clone()))
        );
        let account = accounts.get(&id).await.expect("get").expect("found");
        assert_eq!(
            account.key_ids,
            vec![key_id.as_str().to_string()],
            "one account, one key"
        );
        let mut conn = redis.conn().await;
        let stored: Vec<String> = conn.keys("acct:*").await.expect("keys");
        assert!(
            stored.iter().all(|k| !k.contains(seen.expose())),
            "only hashes are stored: {stored:?}"
        );
    }
}
