//! A user's sessions as a list of devices (SPEC §4 "Multi-device"): listing and counting the
//! active ones. Ending them is in `revoke`.

use super::{active, session_info_row, target_user};
use crate::db::{Columns, Statement, UUID};
use crate::definer;
use crate::types::SessionInfo;
use pgrx::prelude::*;
use pgrx::Uuid;

static LIST: Statement = Statement::stable(
    concat!(
        "SELECT ",
        session_info_row!(),
        " FROM session_ext.user_sessions s WHERE s.user_id = $1 AND ",
        active!(),
        " ORDER BY s.last_active_at DESC, s.id DESC"
    ),
    &[UUID],
);

static COUNT: Statement = Statement::stable(
    concat!("SELECT count(*) FROM session_ext.user_sessions s WHERE s.user_id = $1 AND ", active!()),
    &[UUID],
);

/// The active sessions of a user (the caller's own when `user_id` is NULL), most recently
/// active first, without secrets.
#[pg_extern(stable, parallel_restricted)]
fn list_user_sessions(user_id: default!(Option<Uuid>, "NULL")) -> SetOfIterator<'static, SessionInfo> {
    definer::as_owner(|| {
        let user = target_user(user_id)?;
        let mut sessions = Vec::new();
        Spi::connect(|client| {
            LIST.each(client, &[user.into()], |row| sessions.extend(row.varlena(1).map(SessionInfo)))
        });
        Ok(SetOfIterator::new(sessions))
    })
}

/// How many active sessions a user has (the caller's own when `user_id` is NULL).
#[pg_extern(stable, parallel_restricted)]
fn count_user_sessions(user_id: default!(Option<Uuid>, "NULL")) -> i64 {
    definer::as_owner(|| {
        let user = target_user(user_id)?;
        Ok(Spi::connect(|client| COUNT.one(client, &[user.into()]).and_then(|r| r.col(1)).unwrap_or(0)))
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE, BOB};
    use pgrx::prelude::*;

    #[pg_test]
    fn only_active_sessions_are_listed_and_counted() {
        let (live, _) = create(ALICE, "");
        let (revoked, _) = create(ALICE, "");
        let (expired, _) = create(ALICE, "");
        create(BOB, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET revoked_at = now(), revoke_reason = 'x' WHERE id = '{revoked}';
             UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s' WHERE id = '{expired}';"
        ))
        .unwrap();
        let listed = Spi::get_one::<String>(&format!(
            "SELECT string_agg(id::text, ',') FROM session_ext.list_user_sessions('{ALICE}')"
        ))
        .unwrap();
        assert_eq!(listed, Some(live.to_string()));
        assert_eq!(count(&format!("SELECT session_ext.count_user_sessions('{ALICE}')")), 1);
        assert_eq!(count(&format!("SELECT session_ext.count_user_sessions('{BOB}')")), 1);
    }

    #[pg_test(error = "no authenticated user")]
    fn the_own_list_needs_a_user() {
        count("SELECT count(*) FROM session_ext.list_user_sessions()");
    }
}
