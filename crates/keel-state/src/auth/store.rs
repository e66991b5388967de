//! The auth state: whether auth is on, the auth revision, users and roles. Replicated: changed only
//! by applied entries, stored in the store's auth table in the same write batch as everything else
//! an entry changes, and kept in memory (with each user's merged permissions) for the checks every
//! request makes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_mvcc::{Store, Table, WriteBatch};
use keel_proto::etcd::PbTxnOpRequest as Op;
use keel_proto::etcd::PbTxnRequest as TxnRequest;
use keel_proto::{PermissionRecord, RequestAuth, RequestBody, RoleRecord, UserRecord};
use parking_lot::RwLock;
use prost::Message;

use super::perms::{Permissions, READWRITE};
use super::TokenIssuer;
use super::ROOT;
use crate::lease::Lessor;
use crate::StateError;

pub const KEY_ENABLED: &[u8] = b"enabled";
pub const KEY_REVISION: &[u8] = b"revision";
pub const USER_PREFIX: &str = "user/";
pub const ROLE_PREFIX: &str = "role/";

#[derive(Default)]
struct State {
    users: BTreeMap<String, UserRecord>,
    roles: BTreeMap<String, RoleRecord>,
    /// Each user's permissions merged from its roles (rebuilt on every change: changes are rare,
    /// checks are per request).
    perms: HashMap<String, Permissions>,
}

impl State {
    fn rebuild_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .values()
            .map(|u| {
                let granted = u
                    .roles
                    .iter()
                    .filter_map(|r| roles.get(r))
                    .flat_map(|r| &r.permissions);
                (u.name.clone(), Permissions::merge(granted))
            })
            .collect();
    }

    fn user(&self, name: &str) -> Result<&UserRecord, StateError> {
        self.users.get(name).ok_or(StateError::UserNotFound)
    }
}

/// The users, roles and switch of etcd's auth, with the tokens this member accepts.
pub struct AuthStore {
    state: RwLock<State>,
    enabled: AtomicBool,
    revision: AtomicU64,
    /// Tokens (local to this member; simple tokens are learnt from applied entries).
    pub tokens: Box<dyn TokenIssuer>,
}

impl AuthStore {
    /// The auth state recorded in `store`.
    pub fn load(store: &Store, tokens: Box<dyn TokenIssuer>) -> Result<AuthStore, StateError> {
        let a = AuthStore {
            state: RwLock::new(State::default()),
            enabled: AtomicBool::new(false),
            revision: AtomicU64::new(1),
            tokens,
        };
        a.reload(store)?;
        Ok(a)
    }

    /// Reads the state again (after a snapshot replaced it).
    pub fn reload(&self, store: &Store) -> Result<(), StateError> {
        let corrupt = |e: prost::DecodeError| StateError::Storage(format!("corrupt auth: {e}"));
        let mut state = State::default();
        let (mut enabled, mut revision) = (false, 1);
        for (k, v) in store.records(Table::Auth)? {
            if k == KEY_ENABLED {
                enabled = v == [1];
            } else if k == KEY_REVISION {
                revision = u64::from_be_bytes(v.try_into().unwrap_or_default());
            } else if k.starts_with(USER_PREFIX.as_bytes()) {
                let u = UserRecord::decode(v.as_slice()).map_err(corrupt)?;
                state.users.insert(u.name.clone(), u);
            } else if k.starts_with(ROLE_PREFIX.as_bytes()) {
                let r = RoleRecord::decode(v.as_slice()).map_err(corrupt)?;
                state.roles.insert(r.name.clone(), r);
            }
        }
        state.rebuild_perms();
        *self.state.write() = state;
        self.enabled.store(enabled, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        // The users may have changed wholesale (an installed snapshot): no old token stays valid.
        self.tokens.clear();
        Ok(())
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The auth revision: it grows with every change to users, roles or permissions.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    // ---- identifying and authorizing callers ----

    /// Who a request comes from: the user its token names, else its client certificate's
    /// common name, else nobody (refused by every check while auth is enabled). The revision is
    /// the one the caller's permissions are checked against.
    pub fn identify(
        &self,
        token: Option<&str>,
        cert_user: impl FnOnce() -> Option<String>,
    ) -> Result<RequestAuth, StateError> {
        let current = self.revision();
        let named = |username: &str| RequestAuth {
            username: username.to_string(),
            revision: current,
        };
        if !self.enabled() {
            return Ok(named(""));
        }
        let Some(token) = token else {
            return Ok(named(&cert_user().unwrap_or_default()));
        };
        let info = self
            .tokens
            .identify(token)
            .ok_or(StateError::InvalidAuthToken)?;
        Ok(RequestAuth {
            username: info.user,
            // A JWT from before the last auth change is stale; one from a revision this member
            // has not applied yet is checked against what it has.
            revision: info.revision.map_or(current, |r| r.min(current)),
        })
    }

    /// etcd's checks common to every permission: the caller is a user, its revision current.
    /// Its permissions, none for a root user (who may do anything).
    fn check_caller<'s>(
        &self,
        state: &'s State,
        who: &RequestAuth,
    ) -> Result<Option<&'s Permissions>, StateError> {
        if who.username.is_empty() {
            return Err(StateError::UserEmpty);
        }
        if who.revision < self.revision() {
            return Err(StateError::AuthOldRevision);
        }
        let user = state
            .users
            .get(&who.username)
            .ok_or(StateError::PermissionDenied)?;
        if has_root(user) {
            return Ok(None);
        }
        let perms = state.perms.get(&who.username);
        Ok(Some(perms.ok_or(StateError::PermissionDenied)?))
    }

    fn check_keys(
        &self,
        who: &RequestAuth,
        allowed: impl Fn(&Permissions) -> bool,
    ) -> Result<(), StateError> {
        if !self.enabled() {
            return Ok(());
        }
        let state = self.state.read();
        match self.check_caller(&state, who)? {
            None => Ok(()),
            Some(p) if allowed(p) => Ok(()),
            Some(_) => Err(StateError::PermissionDenied),
        }
    }

    /// May `who` read `key`..`range_end`?
    pub fn check_read(
        &self,
        who: &RequestAuth,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), StateError> {
        self.check_keys(who, |p| p.can_read(key, range_end))
    }

    /// May `who` write `key`..`range_end`?
    pub fn check_write(
        &self,
        who: &RequestAuth,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), StateError> {
        self.check_keys(who, |p| p.can_write(key, range_end))
    }

    /// Is `who` a user with the root role? (Auth management, maintenance, membership.)
    pub fn check_admin(&self, who: &RequestAuth) -> Result<(), StateError> {
        if !self.enabled() {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(StateError::UserEmpty);
        }
        let state = self.state.read();
        if has_root(state.user(&who.username)?) {
            Ok(())
        } else {
            Err(StateError::PermissionDenied)
        }
    }

    /// Whether the auth state is still the one `who` was checked against (a read done while it
    /// changed is refused, as etcd does).
    pub fn check_current(&self, who: &RequestAuth) -> Result<(), StateError> {
        if self.enabled() && !who.username.is_empty() && who.revision != self.revision() {
            return Err(StateError::AuthOldRevision);
        }
        Ok(())
    }

    /// Every permission a txn needs: read for each compare, and each op's own (nested txns too).
    pub fn check_txn(
        &self,
        who: &RequestAuth,
        t: &TxnRequest,
        leases: &Lessor,
    ) -> Result<(), StateError> {
        for c in &t.compare {
            self.check_read(who, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => self.check_read(who, &r.key, &r.range_end)?,
                Some(Op::RequestPut(p)) => {
                    self.check_put(who, &p.key, p.lease, p.prev_kv, leases)?
                }
                Some(Op::RequestDeleteRange(d)) => {
                    self.check_delete(who, &d.key, &d.range_end, d.prev_kv)?
                }
                Some(Op::RequestTxn(t)) => self.check_txn(who, t, leases)?,
                None => {}
            }
        }
        Ok(())
    }

    fn check_put(
        &self,
        who: &RequestAuth,
        key: &[u8],
        lease: i64,
        prev_kv: bool,
        leases: &Lessor,
    ) -> Result<(), StateError> {
        self.check_write(who, key, &[])?;
        // Attaching a lease whose keys the caller may not write would let it delete them by
        // revoking the lease.
        self.check_lease_keys(who, lease, leases)?;
        if prev_kv {
            self.check_read(who, key, &[])?;
        }
        Ok(())
    }

    fn check_delete(
        &self,
        who: &RequestAuth,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<(), StateError> {
        self.check_write(who, key, range_end)?;
        if prev_kv {
            self.check_read(who, key, range_end)?;
        }
        Ok(())
    }

    /// May `who` delete every key attached to `lease` (revoke it, or attach more keys to it)?
    pub fn check_lease_keys(
        &self,
        who: &RequestAuth,
        lease: i64,
        leases: &Lessor,
    ) -> Result<(), StateError> {
        if lease == 0 || !self.enabled() {
            return Ok(());
        }
        for key in leases.keys(lease).unwrap_or_default() {
            self.check_write(who, &key, &[])?;
        }
        Ok(())
    }

    /// The state machine's check of a proposed request, against the state it is applied to: a
    /// member's own proposals (no caller) pass, a client's need the permissions the request
    /// uses, at the auth revision it was proposed at.
    pub fn authorize(
        &self,
        who: Option<&RequestAuth>,
        body: &RequestBody,
        leases: &Lessor,
    ) -> Result<(), StateError> {
        let Some(who) = who.filter(|_| self.enabled()) else {
            return Ok(());
        };
        if who.revision < self.revision() {
            return Err(StateError::AuthOldRevision);
        }
        use RequestBody::*;
        match body {
            Put(p) => self.check_put(who, &p.key, p.lease, p.prev_kv, leases),
            DeleteRange(d) => self.check_delete(who, &d.key, &d.range_end, d.prev_kv),
            Txn(t) => self.check_txn(who, t, leases),
            LeaseRevoke(r) => self.check_lease_keys(who, r.id, leases),
            AuthEnable(_)
            | AuthDisable(_)
            | UserAdd(_)
            | UserDelete(_)
            | UserChangePassword(_)
            | UserGrantRole(_)
            | UserRevokeRole(_)
            | RoleAdd(_)
            | RoleDelete(_)
            | RoleGrantPermission(_)
            | RoleRevokePermission(_)
            | MemberUpdate(_)
            | Alarm(_) => self.check_admin(who),
            Compaction(_) | LeaseGrant(_) | LeaseCheckpoint(_) | MemberAttributes(_)
            | Authenticate(_) => Ok(()),
        }
    }

    // ---- reads ----

    /// The password hash of `name` and the revision it was read at, for a password check.
    pub fn password_of(&self, name: &str) -> Result<(Option<String>, u64), StateError> {
        if !self.enabled() {
            return Err(StateError::AuthNotEnabled);
        }
        let state = self.state.read();
        let user = state.users.get(name).ok_or(StateError::AuthFailed)?;
        let hash = (!user.no_password).then(|| user.password_hash.clone());
        Ok((hash, self.revision()))
    }

    /// A user's roles.
    pub fn user_roles(&self, name: &str) -> Result<Vec<String>, StateError> {
        Ok(self.state.read().user(name)?.roles.clone())
    }

    /// Every user's name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    /// A role's permissions (the root role: every key).
    pub fn role_permissions(&self, name: &str) -> Result<Vec<PermissionRecord>, StateError> {
        let state = self.state.read();
        let role = state.roles.get(name).ok_or(StateError::RoleNotFound)?;
        if name == ROOT {
            return Ok(vec![PermissionRecord {
                perm_type: READWRITE,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(role.permissions.clone())
    }

    /// Every role's name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    /// Whether user `user` has role `role` (it may read that role).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state
            .read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    // ---- applying changes ----

    /// Applies an auth change; `index` is the entry's (it completes a simple token).
    pub fn apply(
        &self,
        wb: &mut WriteBatch<'_>,
        body: &RequestBody,
        index: u64,
    ) -> Result<Option<String>, StateError> {
        let mut state = self.state.write();
        let s = &mut *state;
        use RequestBody::*;
        match body {
            AuthEnable(_) => {
                if self.enabled() {
                    return Ok(None);
                }
                let root = s.users.get(ROOT).ok_or(StateError::RootUserMissing)?;
                if !has_root(root) {
                    return Err(StateError::RootRoleMissing);
                }
                wb.put_record(Table::Auth, KEY_ENABLED, &[1]);
                self.enabled.store(true, Ordering::Release);
                tracing::info!("auth enabled");
                return Ok(None);
            }
            AuthDisable(_) => {
                if !self.enabled() {
                    return Ok(None);
                }
                wb.put_record(Table::Auth, KEY_ENABLED, &[0]);
                self.enabled.store(false, Ordering::Release);
                self.tokens.clear();
                tracing::info!("auth disabled");
            }
            Authenticate(a) => {
                if !self.enabled() {
                    return Err(StateError::AuthNotEnabled);
                }
                match s.users.get(&a.name) {
                    Some(u) if !u.no_password => {}
                    _ => return Err(StateError::AuthFailed),
                }
                return Ok(Some(self.tokens.assign_simple(
                    &a.name,
                    &a.token_prefix,
                    index,
                )));
            }
            UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(StateError::UserEmpty);
                }
                if s.users.contains_key(&r.name) {
                    return Err(StateError::UserExists);
                }
                let user = UserRecord {
                    name: r.name.clone(),
                    password_hash: r.hashed_password.clone(),
                    roles: Vec::new(),
                    no_password: r.options.as_ref().is_some_and(|o| o.no_password),
                };
                save_user(wb, &user);
                s.users.insert(r.name.clone(), user);
            }
            UserDelete(r) => {
                if self.enabled() && r.name == ROOT {
                    return Err(StateError::InvalidAuthMgmt);
                }
                s.users.remove(&r.name).ok_or(StateError::UserNotFound)?;
                wb.delete_record(Table::Auth, &record_key(USER_PREFIX, &r.name));
                self.tokens.invalidate_user(&r.name);
            }
            UserChangePassword(r) => {
                let user = s.users.get_mut(&r.name).ok_or(StateError::UserNotFound)?;
                user.password_hash = r.hashed_password.clone();
                save_user(wb, user);
                self.tokens.invalidate_user(&r.name);
            }
            UserGrantRole(r) => {
                if r.role != ROOT && !s.roles.contains_key(&r.role) {
                    return Err(StateError::RoleNotFound);
                }
                let user = s.users.get_mut(&r.user).ok_or(StateError::UserNotFound)?;
                let Err(at) = user.roles.binary_search(&r.role) else {
                    return Ok(None);
                };
                user.roles.insert(at, r.role.clone());
                save_user(wb, user);
            }
            UserRevokeRole(r) => {
                if self.enabled() && r.name == ROOT && r.role == ROOT {
                    return Err(StateError::InvalidAuthMgmt);
                }
                let user = s.users.get_mut(&r.name).ok_or(StateError::UserNotFound)?;
                let at = user
                    .roles
                    .binary_search(&r.role)
                    .map_err(|_| StateError::RoleNotGranted)?;
                user.roles.remove(at);
                save_user(wb, user);
            }
            RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(StateError::RoleEmpty);
                }
                if s.roles.contains_key(&r.name) {
                    return Err(StateError::RoleExists);
                }
                let role = RoleRecord {
                    name: r.name.clone(),
                    permissions: Vec::new(),
                };
                save_role(wb, &role);
                s.roles.insert(r.name.clone(), role);
            }
            RoleDelete(r) => {
                if self.enabled() && r.role == ROOT {
                    return Err(StateError::InvalidAuthMgmt);
                }
                s.roles.remove(&r.role).ok_or(StateError::RoleNotFound)?;
                wb.delete_record(Table::Auth, &record_key(ROLE_PREFIX, &r.role));
                for user in s.users.values_mut() {
                    if let Ok(at) = user.roles.binary_search(&r.role) {
                        user.roles.remove(at);
                        save_user(wb, user);
                    }
                }
            }
            RoleGrantPermission(r) => {
                let role = s.roles.get_mut(&r.name).ok_or(StateError::RoleNotFound)?;
                let Some(p) = &r.perm else {
                    return Err(StateError::PermissionNotGiven);
                };
                let perm = PermissionRecord {
                    perm_type: p.perm_type,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                };
                if !super::perms::is_valid(&perm) {
                    return Err(StateError::InvalidAuthMgmt);
                }
                // Granting the same keys again replaces the permission type.
                let same =
                    |q: &PermissionRecord| q.key == perm.key && q.range_end == perm.range_end;
                match role.permissions.iter_mut().find(|q| same(q)) {
                    Some(q) => q.perm_type = perm.perm_type,
                    None => {
                        let at = role.permissions.partition_point(|q| q.key <= perm.key);
                        role.permissions.insert(at, perm);
                    }
                }
                save_role(wb, role);
            }
            RoleRevokePermission(r) => {
                let role = s.roles.get_mut(&r.role).ok_or(StateError::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions
                    .retain(|q| q.key != r.key || q.range_end != r.range_end);
                if role.permissions.len() == before {
                    return Err(StateError::PermissionNotGranted);
                }
                save_role(wb, role);
            }
            other => {
                return Err(StateError::Storage(format!(
                    "not an auth change: {other:?}"
                )))
            }
        }
        s.rebuild_perms();
        let revision = self.revision() + 1;
        wb.put_record(Table::Auth, KEY_REVISION, &revision.to_be_bytes());
        self.revision.store(revision, Ordering::Release);
        Ok(None)
    }
}

fn has_root(user: &UserRecord) -> bool {
    user.roles.iter().any(|r| r == ROOT)
}

fn record_key(prefix: &str, name: &str) -> Vec<u8> {
    format!("{prefix}{name}").into_bytes()
}

fn save_user(wb: &mut WriteBatch<'_>, user: &UserRecord) {
    wb.put_record(
        Table::Auth,
        &record_key(USER_PREFIX, &user.name),
        &user.encode_to_vec(),
    );
}

fn save_role(wb: &mut WriteBatch<'_>, role: &RoleRecord) {
    wb.put_record(
        Table::Auth,
        &record_key(ROLE_PREFIX, &role.name),
        &role.encode_to_vec(),
    );
}
