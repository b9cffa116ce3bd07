//! What the auth service must remember: refresh tokens (as hashes), their
//! families, and revoked access tokens. SQLite, in a file or in memory.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// Why the store failed. Answered as a 500 `server_error`, logged in full.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database lock poisoned")]
    Poisoned,
    #[error("creating the state database: {0}")]
    Create(std::io::Error),
}

/// Create `path` with mode 0600 when it does not exist yet (SQLite would
/// use the umask), so refresh-token hashes are not world-readable.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A stored refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub family: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: i64,
    pub used: bool,
    pub family_revoked: bool,
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// Valid: it is now used, and its successor may be issued.
    Fresh(RefreshRecord),
    /// Never issued (or pruned).
    Unknown,
    Expired,
    /// Its family was revoked earlier.
    Revoked,
    /// Presented a second time: the whole family is revoked now.
    Reused,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash BLOB PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS revoked_families (
    family TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_access_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS access_tokens (
    jti TEXT PRIMARY KEY,
    family TEXT,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_tokens_family ON access_tokens(family);
";

/// A refresh token about to be issued (stored as its hash).
pub struct NewRefresh {
    pub hash: Vec<u8>,
    pub family: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: i64,
}

/// An access token about to be issued: remembered so that revoking its
/// refresh-token family revokes it too.
pub struct NewAccess {
    pub jti: String,
    pub family: Option<String>,
    pub expires_at: i64,
}

impl Store {
    /// Open (creating, readable by its owner only) the database at `path`,
    /// or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = match path {
            Some(path) => {
                create_private(path).map_err(StoreError::Create)?;
                Connection::open(path)?
            }
            None => Connection::open_in_memory()?,
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A used refresh token or a revocation must survive a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut conn)?)
    }

    /// Record a newly issued access token, and its refresh token if any, in
    /// one transaction.
    pub fn record_issue(
        &self,
        access: &NewAccess,
        refresh: Option<&NewRefresh>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            insert_access(&tx, access)?;
            if let Some(refresh) = refresh {
                insert_refresh(&tx, refresh)?;
            }
            tx.commit()
        })
    }

    /// Look a refresh token up without using it.
    pub fn find_refresh(&self, hash: &[u8]) -> Result<Option<RefreshRecord>, StoreError> {
        self.with(|c| find(c, hash))
    }

    /// Use a refresh token of `client_id`, once, and record its successors in
    /// the same transaction, so a token is never used up without its
    /// replacement stored. A second use revokes its whole family (RFC 9700
    /// §4.14.2: refresh token reuse means it was stolen). Another client's
    /// token is `Unknown` and stays untouched.
    pub fn redeem_refresh(
        &self,
        hash: &[u8],
        client_id: &str,
        now: i64,
        access: &NewAccess,
        successor: &NewRefresh,
    ) -> Result<Redeemed, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let Some(record) = find(&tx, hash)?.filter(|r| r.client_id == client_id) else {
                return Ok(Redeemed::Unknown);
            };
            let outcome = if record.family_revoked {
                Redeemed::Revoked
            } else if record.used {
                revoke_family(&tx, &record.family, now)?;
                Redeemed::Reused
            } else if record.expires_at <= now {
                Redeemed::Expired
            } else {
                tx.execute(
                    "UPDATE refresh_tokens SET used = 1 WHERE hash = ?1",
                    params![hash],
                )?;
                insert_access(&tx, access)?;
                insert_refresh(&tx, successor)?;
                Redeemed::Fresh(record)
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    /// Revoke a family: its refresh tokens and the access tokens issued
    /// from them (RFC 7009 §2.1).
    pub fn revoke_family(&self, family: &str, now: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            revoke_family(&tx, family, now)?;
            tx.commit()
        })
    }

    /// Remember a revoked access token until it would have expired anyway.
    pub fn revoke_access(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO revoked_access_tokens (jti, expires_at) VALUES (?1, ?2)",
                params![jti, expires_at],
            )
            .map(drop)
        })
    }

    pub fn is_access_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM revoked_access_tokens WHERE jti = ?1",
                params![jti],
                |_| Ok(()),
            )
            .optional()
            .map(|row| row.is_some())
        })
    }

    /// Every revoked access token that has not expired yet.
    pub fn revoked_jtis(&self, now: i64) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT jti FROM revoked_access_tokens WHERE expires_at >= ?1 ORDER BY jti",
            )?;
            let rows = statement.query_map(params![now], |row| row.get(0))?;
            rows.collect()
        })
    }

    /// Drop rows nothing can ask about any more.
    pub fn prune(&self, now: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM revoked_access_tokens WHERE expires_at < ?1", params![now])?;
            c.execute("DELETE FROM access_tokens WHERE expires_at < ?1", params![now])?;
            c.execute("DELETE FROM refresh_tokens WHERE expires_at < ?1", params![now])?;
            c.execute(
                "DELETE FROM revoked_families WHERE family NOT IN (SELECT family FROM refresh_tokens)",
                [],
            )
            .map(drop)
        })
    }
}

fn find(c: &Connection, hash: &[u8]) -> rusqlite::Result<Option<RefreshRecord>> {
    c.query_row(
        "SELECT r.family, r.client_id, r.scope, r.expires_at, r.used,
                EXISTS (SELECT 1 FROM revoked_families f WHERE f.family = r.family)
         FROM refresh_tokens r WHERE r.hash = ?1",
        params![hash],
        |row| {
            Ok(RefreshRecord {
                family: row.get(0)?,
                client_id: row.get(1)?,
                scope: row.get(2)?,
                expires_at: row.get(3)?,
                used: row.get(4)?,
                family_revoked: row.get(5)?,
            })
        },
    )
    .optional()
}

fn revoke_family(c: &Connection, family: &str, now: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO revoked_families (family, revoked_at) VALUES (?1, ?2)",
        params![family, now],
    )?;
    c.execute(
        "INSERT OR IGNORE INTO revoked_access_tokens (jti, expires_at)
         SELECT jti, expires_at FROM access_tokens WHERE family = ?1",
        params![family],
    )
    .map(drop)
}

fn insert_access(c: &Connection, access: &NewAccess) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO access_tokens (jti, family, expires_at) VALUES (?1, ?2, ?3)",
        params![access.jti, access.family, access.expires_at],
    )
    .map(drop)
}

fn insert_refresh(c: &Connection, r: &NewRefresh) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO refresh_tokens (hash, family, client_id, scope, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![r.hash, r.family, r.client_id, r.scope, r.expires_at],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(hash: &[u8], family: &str, expires_at: i64) -> NewRefresh {
        NewRefresh {
            hash: hash.to_vec(),
            family: family.into(),
            client_id: "client".into(),
            scope: "read".into(),
            expires_at,
        }
    }

    fn access(jti: &str, family: &str) -> NewAccess {
        NewAccess {
            jti: jti.into(),
            family: Some(family.into()),
            expires_at: 100,
        }
    }

    #[test]
    fn a_refresh_token_is_used_once_and_reuse_revokes_the_family_and_its_access_tokens() {
        let store = Store::open(None).unwrap();
        store
            .record_issue(&access("a1", "fam"), Some(&refresh(b"h1", "fam", 100)))
            .unwrap();
        let redeem = |hash: &[u8], client: &str, now, n: &str| {
            store.redeem_refresh(
                hash,
                client,
                now,
                &access(n, "fam"),
                &refresh(n.as_bytes(), "fam", 100),
            )
        };
        assert_eq!(redeem(b"h1", "thief", 10, "x").unwrap(), Redeemed::Unknown);
        assert!(
            matches!(redeem(b"h1", "client", 10, "a2").unwrap(), Redeemed::Fresh(r) if r.scope == "read")
        );
        assert!(!store.is_access_revoked("a2").unwrap());
        assert_eq!(redeem(b"h1", "client", 11, "a3").unwrap(), Redeemed::Reused);
        assert_eq!(
            redeem(b"a2", "client", 12, "a4").unwrap(),
            Redeemed::Revoked,
            "the successor dies too"
        );
        assert!(
            store.is_access_revoked("a1").unwrap(),
            "access tokens of the family die too"
        );
        assert!(store.is_access_revoked("a2").unwrap());
        assert_eq!(
            redeem(b"nope", "client", 12, "a5").unwrap(),
            Redeemed::Unknown
        );
        store
            .record_issue(&access("b1", "other"), Some(&refresh(b"h3", "other", 100)))
            .unwrap();
        assert_eq!(
            redeem(b"h3", "client", 100, "b2").unwrap(),
            Redeemed::Expired
        );
    }

    #[test]
    fn revoked_access_tokens_are_remembered_until_they_expire() {
        let store = Store::open(None).unwrap();
        store.revoke_access("jti-1", 50).unwrap();
        assert!(store.is_access_revoked("jti-1").unwrap());
        assert!(!store.is_access_revoked("jti-2").unwrap());
        store.prune(51).unwrap();
        assert!(!store.is_access_revoked("jti-1").unwrap());
    }
}
