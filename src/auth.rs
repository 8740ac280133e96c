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
use crate::password::{HashError, PasswordHasher, Verified};
use crate::store::{
    NewRefresh, NewSession, NewUser, RevokeReason, RotateOutcome, RotateRequest, SessionUser,
    Store, StoreError, User, from_unix,
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
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    /// Password hashing is at capacity; retry after `retry_after` (whole seconds).
    #[error("too busy, retry in {}s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(_) => Self::Unavailable(e),
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
    /// The client's address, for the password hasher's per-client share.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        self.ip.as_deref()?.parse().ok()
    }
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

pub struct AuthService {
    store: Arc<dyn Store>,
    tokens: TokenService,
    hasher: PasswordHasher,
    lifetimes: Lifetimes,
    signup_enabled: bool,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: TokenService,
        hasher: PasswordHasher,
        lifetimes: Lifetimes,
        signup_enabled: bool,
    ) -> Self {
        Self {
            store,
            tokens,
            hasher,
            lifetimes,
            signup_enabled,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: String,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<User, AuthError> {
        if !self.signup_enabled {
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
        tracing::info!(target: "authd::security", event = "user_registered", user_id = %user.id);
        Ok(user)
    }

    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Issued, AuthError> {
        let email = Email::canonical_lookup(email);
        let password = Password::new(password);
        // A place for the hash first: a flood is refused before it costs a
        // database round trip. Returning early gives the place back.
        let ticket = self.hasher.admit(client.ip_addr())?;
        let credentials = self.store.credentials_by_email(&email).await?;
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
                tracing::info!(
                    target: "authd::security",
                    event = "login_failed",
                    user_id = user.map(|c| c.user.id.to_string()),
                    ip = client.ip.as_deref(),
                );
                return Err(AuthError::InvalidCredentials);
            }
        };

        let session_id = SessionId::new();
        let session_expires_at = now + TimeDelta::seconds(secs(self.lifetimes.session_max_age));
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
        tracing::info!(
            target: "authd::security",
            event = "login_succeeded",
            user_id = %user.id,
            session_id = %session_id,
            ip = client.ip.as_deref(),
        );
        Ok(self.issued(
            user.id,
            session_id,
            refresh_token,
            first.expires_at,
            session_expires_at,
            now,
        ))
    }

    /// Exchange a refresh token for a new pair (see the rotation rules in
    /// [`crate::store::decide`]).
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        presented: &RefreshToken,
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
                grace: self.lifetimes.reuse_grace,
            })
            .await?;
        match outcome {
            RotateOutcome::Rotated { session_expires_at } => Ok(self.issued(
                claims.sub,
                claims.sid,
                successor_token,
                successor.expires_at,
                session_expires_at,
                now,
            )),
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
                tracing::warn!(
                    target: "authd::security",
                    event = "refresh_reused",
                    user_id = %claims.sub,
                    session_id = %claims.sid,
                    "refresh token reuse detected; session revoked",
                );
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
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let Some(token) = presented else {
            return Ok(());
        };
        let claims = match self.tokens.verify_refresh(token, now) {
            Ok(c) => c,
            Err(_) => return Ok(()),
        };
        if self
            .store
            .end_session(claims.sid, claims.sub, RevokeReason::Logout, now)
            .await?
        {
            tracing::info!(
                target: "authd::security",
                event = "logout",
                user_id = %claims.sub,
                session_id = %claims.sid,
            );
        }
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    pub async fn logout_all(
        &self,
        who: &SessionUser,
        now: DateTime<Utc>,
    ) -> Result<u64, AuthError> {
        let ended = self
            .store
            .end_all_sessions(who.user_id, RevokeReason::LogoutAll, now)
            .await?;
        tracing::info!(
            target: "authd::security",
            event = "logout_all",
            user_id = %who.user_id,
            session_id = %who.session_id,
            sessions_ended = ended,
        );
        Ok(ended)
    }

    /// A bearer access token → its live session. A token whose session has
    /// ended is refused here at once; other services rely on its short life.
    pub async fn authenticate(
        &self,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<SessionUser, AuthError> {
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
        let exp = iat.saturating_add(secs(self.lifetimes.refresh_ttl));
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
