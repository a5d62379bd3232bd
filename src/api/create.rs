//! `create_user_session`, in its three overloads (SPEC §4 "Creating").
//!
//! PostgREST picks an overload by the set of argument names in the JSON body, so each
//! overload has a required name no other accepts: `session_token`, `session_data`, `session_id`.

use super::aal::Level;
use super::{args, limits};
use crate::db::{self, JSONB};
use crate::definer;
use crate::errors::{excerpt, ApiError, ApiResult};
use crate::events::{self, Event, Subject};
use crate::identity;
use crate::rows;
use crate::token::{self, TokenHash};
use crate::types::{uuid_text, JsonText, NewSession};
use pgrx::datum::{DatumWithOid, Inet, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};
use serde_json::json;

/// A session for the calling user, keyed by a token the client already holds.
#[pg_extern(name = "create_user_session", volatile, parallel_unsafe)]
fn create_user_session_with_token(session_token: Option<&str>) -> Uuid {
    definer::as_owner(|| {
        let token = args::session_token(session_token, "session_token")?;
        let user_id = identity::require_user()?;
        let options = Options::defaults();
        let row = NewRow {
            user_id,
            session_id: None,
            token_hash: token::hash(token),
            id: None,
            data: args::session_data(Some(JsonText("{}")))?,
            times: Times::starting_now(options.ttl),
            options,
            imported: false,
        };
        let created = row.insert(Some(|| {
            ApiError::new(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, "session_token is already in use")
                .detail("Another session was created with the same token.")
                .hint("Generate a new random token for every session.")
        }))?;
        Ok(created.id)
    })
}

/// Declares an overload that generates the token. Its leading arguments are its own; the
/// optional named arguments are declared here once, so the two overloads cannot drift apart.
/// `$handler` receives them checked, as `Options`.
macro_rules! generating_overload {
    ($(#[$attr:meta])* fn $name:ident($($leading:tt)*) => $handler:expr) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)] // the SQL signature: every option is a named argument
        #[pg_extern(name = "create_user_session", volatile, parallel_unsafe)]
        fn $name(
            $($leading)*
            ttl: default!(Option<Interval>, "NULL"),
            idle_timeout: default!(Option<Interval>, "NULL"),
            device_info: default!(Option<&str>, "NULL"),
            user_agent: default!(Option<&str>, "NULL"),
            ip_address: default!(Option<Inet>, "NULL"),
            fingerprint: default!(Option<&str>, "NULL"),
        ) -> NewSession {
            definer::as_owner(|| {
                let options = Options::check(ttl, idle_timeout, device_info, user_agent, ip_address, fingerprint)?;
                ($handler)(options)
            })
        }
    };
}

generating_overload! {
    /// A session for `user_id` with a generated id and a generated 256-bit token.
    fn create_user_session_with_data(user_id: Option<Uuid>, session_data: Option<JsonText<'_>>,)
        => |options| create_with_generated_token(user_id, None, session_data, options)
}

generating_overload! {
    /// A session for `user_id` under a session id the caller chose, with a generated token.
    fn create_user_session_with_id(
        user_id: Option<Uuid>,
        session_id: Option<&str>,
        session_data: default!(Option<JsonText<'_>>, "'{}'"),
    ) => |options| {
        let session_id = args::custom_session_id(session_id)?;
        create_with_generated_token(user_id, Some(session_id), session_data, options)
    }
}

fn session_id_taken(session_id: &str) -> ApiError {
    ApiError::new(
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        format!("session_id {} is already taken", excerpt(session_id)),
    )
    .detail(format!("A session with session_id {} exists.", excerpt(session_id)))
    .hint("Choose another session_id, or revoke the existing session first.")
}

fn create_with_generated_token(
    user_id: Option<Uuid>,
    session_id: Option<&str>,
    session_data: Option<JsonText<'_>>,
    options: Options<'_>,
) -> ApiResult<NewSession> {
    let user_id = args::required(user_id, "user_id")?;
    let data = args::session_data(session_data)?;
    identity::scope()?.authorize(user_id)?;
    let token = args::new_token()?;
    let token_hash = token::hash(&token);
    let taken = session_id.map(|id| move || session_id_taken(id));
    let times = Times::starting_now(options.ttl);
    let created = NewRow { user_id, session_id, token_hash, id: None, data, times, options, imported: false }
        .insert(taken)?;
    Ok(NewSession::new(created.id, created.session_id, token, created.expires_at))
}

/// The optional arguments shared by the two generating overloads, checked.
struct Options<'a> {
    ttl: Interval,
    idle_timeout: Option<Interval>,
    device_info: Option<&'a str>,
    user_agent: Option<&'a str>,
    ip_address: Option<Inet>,
    fingerprint: Option<&'a str>,
}

impl<'a> Options<'a> {
    fn check(
        ttl: Option<Interval>,
        idle_timeout: Option<Interval>,
        device_info: Option<&'a str>,
        user_agent: Option<&'a str>,
        ip_address: Option<Inet>,
        fingerprint: Option<&'a str>,
    ) -> ApiResult<Self> {
        Ok(Self {
            ttl: args::ttl(ttl)?,
            idle_timeout: args::idle_timeout(idle_timeout)?,
            device_info: args::optional_text(device_info, "device_info")?,
            user_agent: args::optional_text(user_agent, "user_agent")?,
            ip_address,
            fingerprint: args::optional_text(fingerprint, "fingerprint")?,
        })
    }

    fn defaults() -> Self {
        Self {
            ttl: crate::settings::session_lifetime(),
            idle_timeout: crate::settings::idle_timeout(),
            device_info: None,
            user_agent: None,
            ip_address: None,
            fingerprint: None,
        }
    }
}

/// When a new session began, was last used, and ends for good.
struct Times {
    created_at: TimestampWithTimeZone,
    last_active_at: TimestampWithTimeZone,
    expires_at: TimestampWithTimeZone,
}

impl Times {
    fn starting_now(ttl: Interval) -> Times {
        let now = rows::now();
        Times { created_at: now, last_active_at: now, expires_at: now + ttl }
    }

    /// `valid_until`: the absolute end, or the idle end when that comes first.
    fn valid_until(&self, idle_timeout: Option<Interval>) -> TimestampWithTimeZone {
        idle_timeout.map_or(self.expires_at, |idle| {
            let idle_end = self.last_active_at + idle;
            if idle_end.into_inner() < self.expires_at.into_inner() {
                idle_end
            } else {
                self.expires_at
            }
        })
    }
}

struct NewRow<'a> {
    user_id: Uuid,
    session_id: Option<&'a str>,
    token_hash: TokenHash,
    /// None: a new UUIDv7.
    id: Option<Uuid>,
    /// The jsonb datum of `session_data`.
    data: pg_sys::Datum,
    times: Times,
    /// `options.ttl` is not read: `times` has the end.
    options: Options<'a>,
    /// Brought over from another store by `import_session`: no per-user limits apply.
    imported: bool,
}

struct Created {
    id: Uuid,
    session_id: String,
    expires_at: TimestampWithTimeZone,
}

impl NewRow<'_> {
    /// Inserts the row within the per-user limits, with its audit row; an error of any kind
    /// leaves nothing written. `taken` is the error for a session id or token already in use;
    /// without it, the id and token were generated and cannot be taken.
    fn insert<F: FnOnce() -> ApiError>(self, taken: Option<F>) -> ApiResult<Created> {
        let id = self.id.unwrap_or_else(|| Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes()));
        let session_id = self.session_id.map_or_else(|| uuid_text(&id), str::to_owned);
        let o = self.options;
        let Times { created_at, last_active_at, expires_at } = self.times;
        let valid_until = self.times.valid_until(o.idle_timeout);
        let fingerprint_hash = o.fingerprint.map(|f| token::hash(f).to_vec());
        let key = args::new_key()?;
        let subject = Subject { id, user_id: self.user_id, ip_address: o.ip_address };
        // The row of session_ext.user_sessions, column by column.
        let row = [
            id.into(),
            self.user_id.into(),
            session_id.as_str().into(),
            self.token_hash.as_slice().into(),
            DatumWithOid::null::<Vec<&[u8]>>(), // root_token_hashes
            DatumWithOid::null::<TimestampWithTimeZone>(), // rotated_at
            db::arg_as(self.data, JSONB),
            1_i64.into(), // data_version
            o.device_info.into(),
            o.user_agent.into(),
            subject.ip_address.clone().into(),
            fingerprint_hash.into(),
            created_at.into(),
            last_active_at.into(),
            expires_at.into(),
            o.idle_timeout.into(),
            valid_until.into(),
            DatumWithOid::null::<TimestampWithTimeZone>(), // revoked_at
            DatumWithOid::null::<&str>(),                  // revoke_reason
            key.as_slice().into(),                         // token_key
            0_i64.into(),                                  // token_generation
            Level::Aal1.name().into(),                     // aal
            DatumWithOid::null::<TimestampWithTimeZone>(), // aal_expires_at
            valid_until.into(),                            // cleanup_after
        ];
        let mut details = json!({ "session_id": session_id });
        if self.imported {
            details["imported"] = true.into();
        }
        Spi::connect(|client| {
            if !self.imported {
                limits::before_create(client, self.user_id)?;
            }
            match taken {
                // A generated id and token cannot collide.
                None => rows::SESSIONS.insert(client, &row),
                Some(taken) => {
                    if rows::SESSION_UNLESS_TAKEN.count(client, &row) == 0 {
                        return Err(taken());
                    }
                }
            }
            events::record(client, Event::Create, Some(&subject), details);
            if !self.imported {
                limits::after_create(client, self.user_id, id);
            }
            Ok(Created { id, session_id, expires_at })
        })
    }
}

/// Brings one session over from a store of your own (admins only), keyed by the SHA-256 of its
/// token, so that the token the client holds validates through session_ext from then on; with
/// `id`, under the id it had there (which JWT claims may name). Returns
/// the new session's id, or NULL for a session already over (past `expires_at`, or idle longer
/// than its idle timeout), which is not imported. `last_active_at` defaults to now and
/// `created_at` to `last_active_at`; `idle_timeout` to `session_ext.idle_timeout` (`0` = none).
/// The session starts a token family at `aal1`, as a new one does; no per-user limit applies.
/// 22023 for a hash that is not 32 bytes and for times in the future or out of order, 23505 for
/// a token or id some session already has, 42501 for a caller that is not an admin.
#[allow(clippy::too_many_arguments)] // the SQL signature: every column of the old row is an argument
#[pg_extern(volatile, parallel_unsafe)]
fn import_session(
    user_id: Option<Uuid>,
    token_sha256: Option<&[u8]>,
    expires_at: Option<TimestampWithTimeZone>,
    last_active_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    created_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    idle_timeout: default!(Option<Interval>, "NULL"),
    device_info: default!(Option<&str>, "NULL"),
    user_agent: default!(Option<&str>, "NULL"),
    ip_address: default!(Option<Inet>, "NULL"),
    session_data: default!(Option<JsonText<'_>>, "'{}'"),
    id: default!(Option<Uuid>, "NULL"),
) -> Option<Uuid> {
    definer::as_owner(|| {
        let user_id = args::required(user_id, "user_id")?;
        let token_hash = args::token_sha256(args::required(token_sha256, "token_sha256")?)?;
        let expires_at = args::moment(args::required(expires_at, "expires_at")?, "expires_at")?;
        let now = rows::now();
        let last_active_at = args::moment(last_active_at.unwrap_or(now), "last_active_at")?;
        let created_at = args::moment(created_at.unwrap_or(last_active_at), "created_at")?;
        args::not_later(last_active_at, now, "last_active_at", "now")?;
        args::not_later(created_at, last_active_at, "created_at", "last_active_at")?;
        let data = args::session_data(session_data)?;
        let options = Options::check(None, idle_timeout, device_info, user_agent, ip_address, None)?;
        identity::require_admin("import_session")?;
        let times = Times { created_at, last_active_at, expires_at };
        if times.valid_until(options.idle_timeout).into_inner() <= now.into_inner() {
            return Ok(None);
        }
        let row = NewRow { user_id, session_id: None, token_hash, id, data, times, options, imported: true };
        let created = row.insert(Some(|| {
            ApiError::new(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, "the session is already here")
                .detail("A session with the same token_sha256 or id exists: it was imported before, or created here.")
                .hint("Import each session once.")
        }))?;
        Ok(Some(created.id))
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{act_as_user, count, create, ALICE, BOB};
    use pgrx::prelude::*;

    #[pg_test]
    fn only_the_sha256_of_a_generated_token_is_stored() {
        let (id, token) = create(ALICE, "");
        assert_eq!(token.len(), 43);
        let stored = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND token_hash = sha256(convert_to('{token}', 'UTF8'))"
        );
        assert_eq!(count(&stored), 1);
        let leaked = format!(
            "SELECT count(*) FROM session_ext.user_sessions s
              WHERE strpos(row_to_json(s)::text, '{token}') > 0"
        );
        assert_eq!(count(&leaked), 0);
    }

    #[pg_test]
    fn ids_are_time_ordered_uuidv7_and_the_default_session_id() {
        let (first, _) = create(ALICE, "");
        let (second, _) = create(ALICE, "");
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{second}' AND session_id = id::text AND substr(id::text, 15, 1) = '7'
                AND id > '{first}'"
        );
        assert_eq!(count(&row), 1);
    }

    #[pg_test]
    fn defaults_come_from_the_settings() {
        Spi::run("SET session_ext.session_lifetime = '2h'; SET session_ext.idle_timeout = 0").unwrap();
        let (id, _) = create(ALICE, "");
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND expires_at = now() + interval '2h' AND idle_timeout IS NULL
                AND valid_until = expires_at AND last_active_at = now() AND data_version = 1"
        );
        assert_eq!(count(&row), 1);
    }

    #[pg_test]
    fn options_are_stored_and_the_fingerprint_hashed() {
        let (id, _) = create(
            ALICE,
            ", ttl => '10 min', idle_timeout => '1 min', device_info => 'phone', user_agent => 'curl/8',
               ip_address => '192.0.2.7', fingerprint => 'fp-1'",
        );
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND expires_at = now() + interval '10 min'
                AND idle_timeout = interval '1 min' AND valid_until = now() + interval '1 min'
                AND device_info = 'phone' AND user_agent = 'curl/8' AND ip_address = '192.0.2.7'
                AND fingerprint_hash = sha256('fp-1'::bytea)"
        );
        assert_eq!(count(&row), 1);
    }

    #[pg_test]
    fn a_client_token_session_belongs_to_the_caller() {
        act_as_user(BOB);
        let token = "c".repeat(40);
        let id = Spi::get_one::<pgrx::Uuid>(&format!("SELECT session_ext.create_user_session('{token}')"))
            .unwrap()
            .unwrap();
        Spi::run("RESET ROLE").unwrap();
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND user_id = '{BOB}' AND token_hash = sha256('{token}'::bytea)"
        );
        assert_eq!(count(&row), 1);
    }

    #[pg_test(error = "permission denied for the sessions of another user")]
    fn a_user_cannot_create_for_another() {
        act_as_user(ALICE);
        create(BOB, "");
    }
}
