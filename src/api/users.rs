//! Users that go away (SPEC §4): a trigger function for any users table, so that deleting a
//! user ends every session of that user in the same transaction.

use super::revoke;
use crate::definer;
use crate::errors::{excerpt, ApiError, ApiResult};
use crate::types::TriggerResult;
use pgrx::datum::TryFromDatumError;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTriggerLevel, PgTriggerOperation, PgTriggerWhen, Uuid};

/// `AFTER DELETE ... FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions(['column'])`:
/// revokes every active session of the deleted row's user, read from the `uuid` column the
/// argument names (default `id`), with reason `user_deleted` (audited and notified, as
/// `revoke_all_user_sessions`). The deletion is the authority: it acts whoever deletes, so
/// attach it only where deleting a row means the user is gone. 39P01 when attached another
/// way, 42703 for a missing column, 42804 for a column that is not `uuid`.
// Not `#[pg_trigger]`: its wrapper panics (an internal error) when the function is called other
// than by the trigger manager; PostgreSQL's own trigger functions answer 39P01 then.
#[pg_extern(volatile, parallel_unsafe)]
fn end_user_sessions(fcinfo: pg_sys::FunctionCallInfo) -> TriggerResult {
    definer::as_owner(|| {
        // SAFETY: the call's own fcinfo; `from_fcinfo` checks that the trigger manager made it.
        let trigger = unsafe { PgTrigger::from_fcinfo(&*fcinfo) }.map_err(|_| not_fired_as_expected("?"))?;
        if let Some(user) = deleted_user(&trigger)? {
            Spi::connect(|client| revoke::revoke_user(client, user, "user_deleted"));
        }
        Ok(())
    });
    TriggerResult
}

fn not_fired_as_expected(trigger: &str) -> ApiError {
    ApiError::new(
        PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        "session_ext.end_user_sessions must be fired AFTER DELETE FOR EACH ROW",
    )
    .detail(format!("Trigger {} is not.", excerpt(trigger)))
    .hint("CREATE TRIGGER ... AFTER DELETE ON <users table> FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('<id column>').")
}

/// The user id of the deleted row; None for a NULL id.
fn deleted_user(trigger: &PgTrigger<'_>) -> ApiResult<Option<Uuid>> {
    let fired_as = (trigger.when(), trigger.level(), trigger.op());
    let old = match fired_as {
        (Ok(PgTriggerWhen::After), PgTriggerLevel::Row, Ok(PgTriggerOperation::Delete)) => trigger.old(),
        _ => None,
    };
    let Some(old) = old else { return Err(not_fired_as_expected(trigger.name().unwrap_or("?"))) };
    let arguments = trigger.extra_args().unwrap_or_default();
    let column = match arguments.as_slice() {
        [] => "id",
        [column] => column.as_str(),
        _ => {
            return Err(ApiError::new(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "session_ext.end_user_sessions takes at most one argument",
            )
            .detail(format!(
                "It was given {}: the name of the user id column is the only one.",
                arguments.len()
            )))
        }
    };
    let table = trigger.table_name().unwrap_or_default();
    old.get_by_name::<Uuid>(column).map_err(|error| match error {
        TryFromDatumError::IncompatibleTypes { datum_type, .. } => ApiError::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("column {} of {} is not a uuid", excerpt(column), excerpt(&table)),
        )
        .detail(format!("It is {datum_type}; session_ext identifies users by uuid.")),
        _ => ApiError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("column {} of {} does not exist", excerpt(column), excerpt(&table)),
        )
        .detail("session_ext.end_user_sessions reads the user id from the column its argument names (default id).")
        .hint("Name the id column: EXECUTE FUNCTION session_ext.end_user_sessions('user_id')."),
    })
}
