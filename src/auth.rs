//! The authentication service: register, login, refresh (rotation with reuse
//! detection), logout, logout everywhere, and bearer authentication. Knows
//! nothing of HTTP; talks to the store through its trait; takes "now" from the
//! caller.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{
    AccessToken, Email, Password, PasswordError, RefreshToken, SessionId, TokenId, UserId,
};
use crate::lockout::{self, LockoutPolicy, ThrottleKeys};
use crate::password::{HashError, PasswordHasher, Verified};
use crate::store::{
    CleanupCutoffs, CleanupReport, Ending, NewRefresh, NewSession, NewUser, RevokeReason,
    RotateOutcome, RotateRequest, SessionInfo, SessionUser, Store, StoreError, User, from_unix,
};
use crate::tokens::{TokenError, TokenService};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("email or password is wrong")]
    InvalidCredentials,
    #[error("token is invalid")]
    InvalidToken,
    #[error("token has expired")]
    TokenExpired,
    #[error("refresh token was already used; the session has been ended")]
    RefreshTokenReused,
    #[error("session has ended")]
    SessionRevoked,
    #[error("session has reached its maximum lifetime")]
    SessionExpired,
    #[error("email is already registered")]
    EmailTaken,
    #[error("sign-up is disabled")]
    SignupDisabled,
    /// `message` names the field and the rule it breaks.
    #[error("{message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    /// Password hashing is at capacity; retry after `retry_after` (whole seconds).
    #[error("too busy, retry in {}s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    /// Too many failed logins for this account or address: locked until then.
    #[error("too many failed attempts; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("no such session")]
    NotFound,
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(_) | StoreError::Down | StoreError::Conflict(_) => {
                Self::Unavailable(e)
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy { retry_after } => Self::Busy { retry_after },
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid => Self::InvalidToken,
            TokenError::Expired => Self::TokenExpired,
        }
    }
}

/// Where a request came from, recorded on the session.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

impl ClientInfo {
    /// The address the brute-force counters use.
    fn ip_key(&self) -> &str {
        self.ip.as_deref().unwrap_or("unknown")
    }

    /// The client's address, for the password hasher's per-client share.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        self.ip.as_deref()?.parse().ok()
    }
}

/// A security event (target `authd::security`, stable `event` names): who,
/// which session, from where. Never a secret.
fn security_event(
    event: &'static str,
    user: Option<UserId>,
    session: Option<SessionId>,
    client: &ClientInfo,
) {
    crate::metrics::security_event(event);
    tracing::info!(
        target: "authd::security",
        event,
        user_id = user.map(|u| u.to_string()),
        session_id = session.map(|s| s.to_string()),
        ip = client.ip.as_deref(),
        user_agent = client.user_agent.as_deref(),
    );
}

/// `session_revoked`, once per session that ended, with the reason.
fn revoked_event(reason: RevokeReason, user: UserId, ended: &[SessionId], client: &ClientInfo) {
    for session in ended {
        crate::metrics::security_event("session_revoked");
        tracing::info!(
            target: "authd::security",
            event = "session_revoked",
            reason = reason.as_str(),
            user_id = %user,
            session_id = %session,
            ip = client.ip.as_deref(),
            user_agent = client.user_agent.as_deref(),
        );
    }
}

/// `now + d`, saturating instead of overflowing.
fn add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Tokens handed to a client after login or refresh.
#[derive(Debug)]
pub struct Issued {
    pub access_token: AccessToken,
    /// Seconds.
    pub expires_in: u64,
    pub session_id: SessionId,
    pub refresh_token: RefreshToken,
    /// Seconds the refresh token stays usable (cookie `Max-Age`): the earlier of
    /// its own expiry and the session's absolute end.
    pub refresh_max_age: i64,
}

#[derive(Debug, Clone)]
pub struct Lifetimes {
    pub refresh_ttl: Duration,
    pub session_max_age: Duration,
    pub reuse_grace: Duration,
}

/// The service's policy, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lifetimes: Lifetimes,
    pub signup_enabled: bool,
    pub lockout: LockoutPolicy,
    /// How long ended sessions are kept before cleanup deletes them.
    pub cleanup_retention: Duration,
}

/// Rows one cleanup statement deletes at most: short statements, short locks.
pub const CLEANUP_BATCH: u32 = 1000;

/// Of the longest a login may wait for its answer, the part its password hash
/// must be done within: the last tenth is kept for the database writes after
/// the hash (login counters, the new session), which slow down in a flood.
pub fn hash_deadline(login_max_wait: Duration) -> Duration {
    login_max_wait - login_max_wait / 10
}

pub struct AuthService {
    store: Arc<dyn Store>,
    tokens: TokenService,
    hasher: PasswordHasher,
    settings: Settings,
}

/// A live session in the owner's list.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub info: SessionInfo,
    /// The session of the access token that asked.
    pub current: bool,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: TokenService,
        hasher: PasswordHasher,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            tokens,
            hasher,
            settings,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The token service, for what other services may know of it (the JWKS).
    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: String,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<User, AuthError> {
        if !self.settings.signup_enabled {
            return Err(AuthError::SignupDisabled);
        }
        let email = Email::parse(email).map_err(|e| AuthError::Validation {
            field: "email",
            message: e.to_string(),
        })?;
        let password =
            Password::parse_new(password).map_err(|e: PasswordError| AuthError::Validation {
                field: "password",
                message: e.to_string(),
            })?;
        let password_hash = self.hasher.admit(client_ip)?.hash(&password).await?;
        let user = self
            .store
            .create_user(NewUser {
                id: UserId::new(),
                email,
                password_hash,
                now,
            })
            .await?;
        crate::metrics::security_event("user_registered");
        tracing::info!(target: "authd::security", event = "user_registered", user_id = %user.id);
        Ok(user)
    }

    /// Sign in: brute-force limits first (a locked pair, account or address
    /// is refused before any hashing, even with the right password), then the
    /// password, then a new session.
    pub async fn login(
        &self,
        email_as_typed: &str,
        password: String,
        client: ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Issued, AuthError> {
        let result = self.sign_in(email_as_typed, password, client, now).await;
        crate::metrics::login(&result);
        result
    }

    #[tracing::instrument(skip_all)]
    async fn sign_in(
        &self,
        email_as_typed: &str,
        password: String,
        client: ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Issued, AuthError> {
        let password = Password::new(password);
        // A place for the hash first: a flood is refused before it costs a
        // database round trip. Returning early gives the place back.
        let ticket = self.hasher.admit(client.ip_addr())?;
        let email = Email::canonical_lookup(email_as_typed);
        // Counted under the canonical email, or the input itself when it can
        // never be an address: locks look the same for every input.
        let account = email.as_ref().map_or(email_as_typed, |e| e.as_str());
        let keys = ThrottleKeys::new(account, client.ip_key());
        self.refuse_if_locked(&keys, None, &client, now).await?;
        // An input that can never be a stored address (NUL, control
        // characters, over-long) is an unknown email: no query, same cost.
        let credentials = match &email {
            Some(email) => self.store.credentials_by_email(email).await?,
            None => None,
        };
        // Unknown email: verified against a dummy hash, so it costs the same.
        let verified = ticket
            .verify(
                &password,
                credentials.as_ref().map(|c| c.password_hash.clone()),
            )
            .await?;
        let user = match (credentials, verified) {
            (Some(c), Verified::Yes) => c.user,
            (Some(c), Verified::YesRehashed(new_hash)) => {
                // An upgrade that fails is retried at the next login.
                if let Err(e) = self
                    .store
                    .set_password_hash(c.user.id, &new_hash, now)
                    .await
                {
                    tracing::warn!(error = %e, user_id = %c.user.id, "password hash upgrade failed");
                }
                c.user
            }
            (user, _) => {
                let user = user.map(|c| c.user.id);
                self.failed_attempt(&keys, user, &client, now).await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.store.record_login_success(&keys).await?;

        let session_id = SessionId::new();
        let session_expires_at = add(now, self.settings.lifetimes.session_max_age);
        let (refresh_token, first) = self.new_refresh(user.id, session_id, now);
        self.store
            .create_session(
                NewSession {
                    id: session_id,
                    user_id: user.id,
                    now,
                    expires_at: session_expires_at,
                    user_agent: client.user_agent.clone(),
                    ip: client.ip.clone(),
                },
                first,
            )
            .await?;
        security_event("login_succeeded", Some(user.id), Some(session_id), &client);
        Ok(self.issued(
            user.id,
            session_id,
            refresh_token,
            first.expires_at,
            session_expires_at,
            now,
        ))
    }

    /// 429 while any of these counters is locked.
    async fn refuse_if_locked(
        &self,
        keys: &ThrottleKeys,
        user: Option<UserId>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        if let Some(until) = self.store.login_locked_until(keys, now).await? {
            security_event("login_rate_limited", user, None, client);
            return Err(AuthError::RateLimited {
                retry_after: lockout::retry_after(until, now),
            });
        }
        Ok(())
    }

    /// Count a wrong password (or unknown email) on the brute-force counters.
    async fn failed_attempt(
        &self,
        keys: &ThrottleKeys,
        user: Option<UserId>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let locked = self
            .store
            .record_login_failure(keys, &self.settings.lockout, now)
            .await?;
        security_event("login_failed", user, None, client);
        if locked.is_some() {
            crate::metrics::security_event("login_locked");
            tracing::info!(
                target: "authd::security",
                event = "login_locked",
                user_id = user.map(|u| u.to_string()),
                ip = client.ip.as_deref(),
            );
        }
        Ok(())
    }

    /// Exchange a refresh token for a new pair (see the rotation rules in
    /// [`crate::store::decide`]).
    pub async fn refresh(
        &self,
        presented: &RefreshToken,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Issued, AuthError> {
        self.hasher.other_work();
        let result = self.rotate_refresh(presented, client, now).await;
        if let Err(e) = &result {
            crate::metrics::refresh_failed(e);
        }
        result
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_refresh(
        &self,
        presented: &RefreshToken,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Issued, AuthError> {
        // Signature, typ, kid, issuer and expiry before any database work.
        let claims = self.tokens.verify_refresh(presented, now)?;
        let (successor_token, successor) = self.new_refresh(claims.sub, claims.sid, now);
        let outcome = self
            .store
            .rotate(RotateRequest {
                presented: claims.jti,
                presented_hash: presented.hash(),
                family: claims.sid,
                user: claims.sub,
                successor,
                now,
                grace: self.settings.lifetimes.reuse_grace,
            })
            .await?;
        match outcome {
            RotateOutcome::Rotated { session_expires_at } => {
                crate::metrics::refresh("rotated");
                Ok(self.issued(
                    claims.sub,
                    claims.sid,
                    successor_token,
                    successor.expires_at,
                    session_expires_at,
                    now,
                ))
            }
            RotateOutcome::Grace {
                successor,
                session_expires_at,
            } => {
                // HMAC is deterministic: the same stored claims give the same
                // bytes the first racer received.
                let claims_of_successor = self.tokens.refresh_claims(
                    claims.sub,
                    claims.sid,
                    successor.jti,
                    successor.issued_at.timestamp(),
                    successor.expires_at.timestamp(),
                );
                let Some(token) = self
                    .tokens
                    .reissue_refresh(&claims_of_successor, successor.hash)
                else {
                    tracing::warn!(session_id = %claims.sid, "grace successor cannot be reproduced with any configured key");
                    return Err(AuthError::InvalidToken);
                };
                tracing::debug!(session_id = %claims.sid, "concurrent refresh answered inside the grace window");
                crate::metrics::refresh("grace");
                Ok(self.issued(
                    claims.sub,
                    claims.sid,
                    token,
                    successor.expires_at,
                    session_expires_at,
                    now,
                ))
            }
            RotateOutcome::Reused => {
                security_event("refresh_reused", Some(claims.sub), Some(claims.sid), client);
                revoked_event(RevokeReason::Reuse, claims.sub, &[claims.sid], client);
                Err(AuthError::RefreshTokenReused)
            }
            RotateOutcome::SessionRevoked => Err(AuthError::SessionRevoked),
            RotateOutcome::SessionExpired => Err(AuthError::SessionExpired),
            RotateOutcome::TokenExpired => Err(AuthError::TokenExpired),
            RotateOutcome::Unknown => Err(AuthError::InvalidToken),
        }
    }

    /// End the session the refresh token belongs to. Idempotent: no token, a
    /// forged one or an ended session all succeed quietly.
    #[tracing::instrument(skip_all)]
    pub async fn logout(
        &self,
        presented: Option<&RefreshToken>,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        self.hasher.other_work();
        let Some(token) = presented else {
            return Ok(());
        };
        let claims = match self.tokens.verify_refresh(token, now) {
            Ok(c) => c,
            Err(_) => return Ok(()),
        };
        let ended = self
            .store
            .end_sessions(
                claims.sub,
                Ending::One(claims.sid),
                RevokeReason::Logout,
                now,
            )
            .await?;
        if !ended.is_empty() {
            security_event("logout", Some(claims.sub), Some(claims.sid), client);
            revoked_event(RevokeReason::Logout, claims.sub, &ended, client);
        }
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    pub async fn logout_all(
        &self,
        who: &SessionUser,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<u64, AuthError> {
        let ended = self
            .store
            .end_sessions(who.user_id, Ending::All, RevokeReason::LogoutAll, now)
            .await?;
        security_event(
            "logout_all",
            Some(who.user_id),
            Some(who.session_id),
            client,
        );
        revoked_event(RevokeReason::LogoutAll, who.user_id, &ended, client);
        Ok(ended.len() as u64)
    }

    /// The caller's live sessions, newest first.
    pub async fn sessions(
        &self,
        who: &SessionUser,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionView>, AuthError> {
        let list = self.store.list_sessions(who.user_id, now).await?;
        Ok(list
            .into_iter()
            .map(|info| SessionView {
                current: info.id == who.session_id,
                info,
            })
            .collect())
    }

    /// End one of the caller's sessions. Another user's session, an unknown or
    /// an already ended one are all "not found": nothing to tell apart.
    #[tracing::instrument(skip_all)]
    pub async fn end_session(
        &self,
        who: &SessionUser,
        session: SessionId,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let ended = self
            .store
            .end_sessions(who.user_id, Ending::One(session), RevokeReason::User, now)
            .await?;
        if ended.is_empty() {
            return Err(AuthError::NotFound);
        }
        revoked_event(RevokeReason::User, who.user_id, &ended, client);
        Ok(())
    }

    /// Change the caller's password: the current one must be right (a wrong
    /// one counts as a failed login), the new one must pass the rules; every
    /// other session ends in the same transaction, the caller's lives on.
    #[tracing::instrument(skip_all)]
    pub async fn change_password(
        &self,
        who: &SessionUser,
        current: String,
        new: String,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let new = Password::parse_new(new).map_err(|e: PasswordError| AuthError::Validation {
            field: "new_password",
            message: format!("new_password: {e}"),
        })?;
        let current = Password::new(current);
        let ticket = self.hasher.admit(client.ip_addr())?;
        let keys = ThrottleKeys::new(who.email.as_str(), client.ip_key());
        self.refuse_if_locked(&keys, Some(who.user_id), client, now)
            .await?;
        let stored = self
            .store
            .credentials_by_email(&who.email)
            .await?
            .filter(|c| c.user.id == who.user_id)
            .ok_or(AuthError::SessionRevoked)?;
        match ticket.verify(&current, Some(stored.password_hash)).await? {
            Verified::Yes | Verified::YesRehashed(_) => {}
            Verified::No => {
                self.failed_attempt(&keys, Some(who.user_id), client, now)
                    .await?;
                return Err(AuthError::InvalidCredentials);
            }
        }
        let hash = self.hasher.admit(client.ip_addr())?.hash(&new).await?;
        let ended = self
            .store
            .change_password(who.user_id, &hash, who.session_id, now)
            .await?;
        self.store.record_login_success(&keys).await?;
        security_event(
            "password_changed",
            Some(who.user_id),
            Some(who.session_id),
            client,
        );
        revoked_event(RevokeReason::PasswordChanged, who.user_id, &ended, client);
        Ok(())
    }

    /// How long revocation-feed entries are kept: one access-token lifetime and
    /// the verification leeway, after which no token of that session is valid.
    pub fn feed_retention(&self) -> Duration {
        self.tokens.access_ttl() + Duration::from_secs(crate::tokens::LEEWAY_SECS.unsigned_abs())
    }

    /// One cleanup pass: refresh rows past their own expiry, sessions ended
    /// longer than the retention ago, stale login counters. `None` when
    /// another replica is running one.
    pub async fn cleanup(&self, now: DateTime<Utc>) -> Result<Option<CleanupReport>, AuthError> {
        let cutoffs = CleanupCutoffs::at(
            now,
            self.settings.cleanup_retention,
            self.settings.lockout.failure_window,
            self.feed_retention(),
        );
        Ok(self.store.cleanup(&cutoffs, CLEANUP_BATCH).await?)
    }

    /// A bearer access token → its live session. A token whose session has
    /// ended is refused here at once; other services rely on its short life.
    pub async fn authenticate(
        &self,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<SessionUser, AuthError> {
        self.hasher.other_work();
        let claims = self.tokens.verify_access(access_token, now)?;
        self.store
            .live_session(claims.sid, claims.sub, now)
            .await?
            .ok_or(AuthError::SessionRevoked)
    }

    fn new_refresh(
        &self,
        user: UserId,
        session: SessionId,
        now: DateTime<Utc>,
    ) -> (RefreshToken, NewRefresh) {
        let iat = now.timestamp();
        let exp = iat.saturating_add(secs(self.settings.lifetimes.refresh_ttl));
        let jti = TokenId::new();
        let token = self
            .tokens
            .sign_refresh(&self.tokens.refresh_claims(user, session, jti, iat, exp));
        let record = NewRefresh {
            jti,
            hash: token.hash(),
            issued_at: from_unix(iat),
            expires_at: from_unix(exp),
        };
        (token, record)
    }

    fn issued(
        &self,
        user: UserId,
        session_id: SessionId,
        refresh_token: RefreshToken,
        refresh_expires_at: DateTime<Utc>,
        session_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Issued {
        let access = self.tokens.issue_access(user, session_id, now);
        let usable_until = refresh_expires_at.min(session_expires_at);
        Issued {
            access_token: access.token,
            expires_in: access.expires_in,
            session_id,
            refresh_token,
            refresh_max_age: (usable_until.timestamp() - now.timestamp()).max(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_of_the_login_wait_is_kept_for_the_work_after_the_hash() {
        assert_eq!(
            hash_deadline(Duration::from_secs(1)),
            Duration::from_millis(900)
        );
        assert_eq!(
            hash_deadline(Duration::from_millis(250)),
            Duration::from_millis(225)
        );
        assert_eq!(
            hash_deadline(Duration::from_nanos(1)),
            Duration::from_nanos(1)
        );
    }
}
