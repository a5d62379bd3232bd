//! SQL values that cross the function boundary without a detour through Rust types: JSON is
//! never re-parsed by serde (whose depth limit would turn valid input into an internal error),
//! and composite results built by SQL are returned exactly as PostgreSQL made them.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::{Datum, TimestampWithTimeZone};
use pgrx::{pg_sys, IntoDatum, Uuid};

/// A `json` argument as the text PostgreSQL already validated.
pub struct JsonText<'fcx>(pub &'fcx str);

// SAFETY: `json` is stored as text, so unboxing it as `&str` reads exactly its bytes.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonText<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: the caller's contract: a non-null `json` argument.
        JsonText(unsafe { <&'fcx str as ArgAbi<'fcx>>::unbox_arg_unchecked(arg) })
    }
}

pgrx::impl_sql_translatable!(JsonText<'_>, arg_only = "json");

/// A `jsonb` argument as PostgreSQL's own datum, passed on to SQL untouched.
pub struct JsonbDatum(pub pg_sys::Datum);

// SAFETY: a non-null `jsonb` argument is a varlena datum, valid for the call.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbDatum {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: the caller's contract: a non-null argument.
        JsonbDatum(unsafe { arg.unbox_arg_using_from_datum::<pg_sys::Datum>() }.expect("a non-null argument"))
    }
}

pgrx::impl_sql_translatable!(JsonbDatum, arg_only = "jsonb");

/// A composite result, already formed as a datum of the SQL type its name says.
macro_rules! composite_result {
    ($name:ident, $sql:literal) => {
        pub struct $name(pub pg_sys::Datum);

        // SAFETY: the datum is a complete composite value of the declared type.
        unsafe impl BoxRet for $name {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
                // SAFETY: a valid datum allocated in the call's memory context.
                unsafe { fcinfo.return_raw_datum(self.0) }
            }
        }

        pgrx::impl_sql_translatable!($name, $sql);
    };
}

composite_result!(SessionInfo, "session_ext.session_info");

/// What an AFTER trigger function returns: a null pointer (not SQL NULL, which the trigger manager
/// refuses), which PostgreSQL ignores.
pub struct TriggerResult;

// SAFETY: a null pointer datum is what a trigger returns to keep no row.
unsafe impl BoxRet for TriggerResult {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a plain value, marked not null.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(0)) }
    }
}

pgrx::impl_sql_translatable!(TriggerResult, "trigger");
composite_result!(NewSession, "session_ext.new_session");

impl NewSession {
    /// The `session_ext.new_session` composite: the only place a token is ever returned.
    pub fn new(id: Uuid, session_id: String, token: String, expires_at: TimestampWithTimeZone) -> NewSession {
        let fields = [id.into_datum(), session_id.into_datum(), token.into_datum(), expires_at.into_datum()];
        let relations = crate::cache::locked(|r| [(r.new_session_relation, pg_sys::AccessShareLock)]);
        NewSession(form_composite(relations.new_session_type, fields))
    }
}

/// The canonical text of a uuid. pgrx's `Display` writes each byte through `core::fmt` (some
/// 5,000 instructions, 2% of a create); the uuid crate encodes the 36 characters in one pass.
pub fn uuid_text(id: &Uuid) -> String {
    uuid::Uuid::from_bytes(*id.as_bytes()).to_string()
}

/// A composite datum of type `type_oid` from its fields (`None` = NULL), with any TOASTed field
/// flattened so that the value stands alone.
pub fn form_composite<const N: usize>(
    type_oid: pg_sys::Oid,
    fields: [Option<pg_sys::Datum>; N],
) -> pg_sys::Datum {
    let mut values = fields.map(|f| f.unwrap_or(pg_sys::Datum::from(0)));
    let mut nulls = fields.map(|f| f.is_none());
    // SAFETY: the type is a composite of N fields whose types the caller's datums match.
    unsafe {
        let desc = pg_sys::lookup_rowtype_tupdesc(type_oid, -1);
        assert_eq!((*desc).natts as usize, N, "composite type with {N} fields");
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::DecrTupleDescRefCount(desc);
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

#[cfg(test)]
mod tests {
    use super::uuid_text;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uuid_text_is_pgrx_text(bytes in any::<[u8; 16]>()) {
            let id = pgrx::Uuid::from_bytes(bytes);
            prop_assert_eq!(uuid_text(&id), id.to_string());
        }
    }
}
