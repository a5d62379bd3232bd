//! SQL values that cross the function boundary without a detour through Rust types: JSON is
//! never re-parsed by serde (whose depth limit would turn valid input into an internal error),
//! and composite results built by SQL are returned exactly as PostgreSQL made them.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;

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
composite_result!(NewSession, "session_ext.new_session");
