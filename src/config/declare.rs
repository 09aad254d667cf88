//! How a setting is declared: once, with its TOML key (the field), type, default,
//! command-line flag and range. [`settings!`] turns one declaration per section into
//! the serde struct (`[section] key = ...`), its `Default`, the clap arguments of
//! `baton serve`, the flag-over-file merge and the range checks, so none of them can
//! drift from the others.
//!
//! ```ignore
//! settings! {
//!     /// TFTP server settings.
//!     pub struct TftpConfig in "tftp." {
//!         /// Address and UDP port of the TFTP server.
//!         listen: SocketAddr = "0.0.0.0:69".parse().expect("literal"),
//!             flag [value "tftp-listen" SocketAddr, "ADDR:PORT"];
//!         /// Largest block size granted to clients.
//!         max_blksize: u16 = MAX_BLKSIZE,
//!             flag [value "tftp-max-blksize" u16, "BYTES"],
//!             range [MIN_BLKSIZE..=MAX_BLKSIZE, " (RFC 2348)"];
//!     } sections {
//!         /// A nested section, `[tftp.sub]`, its flags and checks included.
//!         sub: SubConfig;
//!     }
//! }
//! ```
//!
//! Flags: `value "long" Type, "VALUE_NAME"` (sets the field, or `Some` of it),
//! `list "long" Type, "VALUE_NAME"` (repeatable, replaces the list), `switch "long"`
//! (sets true), `switch_off "long"` (sets false), each optionally followed by
//! `env "VAR"` (value hidden in help: these are secrets). A flag wins over the file
//! only when it is given (or its variable is set). The help text is the field's doc,
//! plus its default and range.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::ConfigError;

/// True when the argument `id` was given on the command line or by its variable.
pub(super) fn given(m: &ArgMatches, id: &str) -> bool {
    m.try_contains_id(id).unwrap_or(false)
        && matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
}

/// The help text: the doc comment's lines joined, then the TOML key, the range and the
/// default.
pub(super) fn help(
    key: &str,
    doc: &[&str],
    default: Option<String>,
    range: Option<String>,
) -> String {
    let mut h = doc
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    h.push_str(&format!(" [config: {key}]"));
    if let Some(r) = range {
        h.push_str(&format!(" [range: {r}]"));
    }
    if let Some(d) = default {
        h.push_str(&format!(" [default: {d}]"));
    }
    h
}

/// A default worth showing in help: scalars as TOML writes them, not `None` or `[]`.
pub(super) fn shown_default<T: serde::Serialize>(v: &T) -> Option<String> {
    match toml::Value::try_from(v).ok()? {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The kinds of flag a setting can have.
pub(super) enum Flag {
    /// `--long VALUE`.
    Value,
    /// `--long VALUE`, repeatable.
    List,
    /// `--long` sets true.
    On,
    /// `--long` sets false.
    Off,
}

/// The clap argument of a setting.
pub(super) fn arg(
    id: &'static str,
    long: &'static str,
    kind: Flag,
    value_name: Option<&'static str>,
    env: Option<&'static str>,
    help: String,
) -> Arg {
    let mut a = Arg::new(id).long(long).help(help);
    a = match kind {
        Flag::Value => a.action(ArgAction::Set),
        Flag::List => a.action(ArgAction::Append),
        Flag::On => a.action(ArgAction::SetTrue),
        Flag::Off => a.action(ArgAction::SetFalse),
    };
    if let Some(v) = value_name {
        a = a.value_name(v);
    }
    if let Some(e) = env {
        a = a.env(e).hide_env_values(true);
    }
    a
}

/// A setting's value as a range check sees it (`None`: unset, nothing to check).
pub(super) trait Ranged {
    /// The number.
    type Item: PartialOrd + Display + Copy;
    /// The value, if set.
    fn value(&self) -> Option<Self::Item>;
}

macro_rules! ranged {
    ($($t:ty),*) => {$(
        impl Ranged for $t {
            type Item = $t;
            fn value(&self) -> Option<$t> {
                Some(*self)
            }
        }
        impl Ranged for Option<$t> {
            type Item = $t;
            fn value(&self) -> Option<$t> {
                *self
            }
        }
    )*};
}
ranged!(u16, u32, u64, usize);

/// How a range reads in messages and help: `8..=65464`, `1..`.
pub(super) fn range_text<T: Display, R: RangeBounds<T>>(r: &R) -> String {
    let lo = match r.start_bound() {
        Bound::Included(v) => v.to_string(),
        _ => String::new(),
    };
    match r.end_bound() {
        Bound::Included(v) => format!("{lo}..={v}"),
        _ => format!("{lo}.."),
    }
}

/// Refuses a value outside `r`, naming the key: "must be between 8 and 65464 (RFC
/// 2348)", "must be at least 1".
pub(super) fn check_range<V: Ranged, R: RangeBounds<V::Item>>(
    key: &'static str,
    v: &V,
    r: R,
    suffix: &str,
) -> Result<(), ConfigError> {
    let Some(v) = v.value() else {
        return Ok(());
    };
    if r.contains(&v) {
        return Ok(());
    }
    let message = match (r.start_bound(), r.end_bound()) {
        (Bound::Included(lo), Bound::Included(hi)) => {
            format!("must be between {lo} and {hi}{suffix}")
        }
        (Bound::Included(lo), _) => format!("must be at least {lo}{suffix}"),
        (_, Bound::Included(hi)) => format!("must be at most {hi}{suffix}"),
        _ => format!("is out of range{suffix}"),
    };
    Err(ConfigError::Invalid { key, message })
}

/// Declares settings sections; see the module doc.
macro_rules! settings {
    ($(
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $prefix:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr
                    $(, flag [$($flag:tt)+])?
                    $(, range [$range:expr $(, $suffix:literal)?])?
                ;
            )*
        } $(sections {
            $(
                $(#[doc = $ndoc:literal])*
                $nfield:ident : $nty:ty;
            )*
        })?
    )*) => {$(
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
            $($(
                $(#[doc = $ndoc])*
                pub $nfield: $nty,
            )*)?
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                    $($($nfield: <$nty>::default(),)*)?
                }
            }
        }

        impl $name {
            /// The `baton serve` flags of this section and the sections inside it.
            pub(crate) fn flag_args() -> Vec<clap::Arg> {
                #[allow(unused_mut)]
                let mut args: Vec<clap::Arg> = Vec::new();
                $({
                    let doc: &[&str] = &[$($doc),*];
                    let range: Option<String> = settings!(@range_text $($range)?);
                    let _ = (doc, &range);
                    $( args.push(settings!(@arg
                        concat!($prefix, stringify!($field)),
                        doc,
                        settings!(@default $ty, $default),
                        range,
                        $($flag)+
                    )); )?
                })*
                $($( args.extend(<$nty>::flag_args()); )*)?
                args
            }

            /// Every TOML key of this section and the sections inside it.
            #[cfg(test)]
            pub(crate) fn keys() -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut keys = vec![$(concat!($prefix, stringify!($field))),*];
                $($( keys.extend(<$nty>::keys()); )*)?
                keys
            }

            /// Sets every field whose flag was given in `m`.
            pub(crate) fn apply_flags(&mut self, m: &clap::ArgMatches) {
                let _ = m;
                $(
                    $( settings!(@apply self.$field, concat!($prefix, stringify!($field)), m, $($flag)+); )?
                )*
                $($( self.$nfield.apply_flags(m); )*)?
            }

            /// Checks every declared range, nested sections included.
            pub(crate) fn check_ranges(&self) -> Result<(), ConfigError> {
                $(
                    $( $crate::config::declare::check_range(
                        concat!($prefix, stringify!($field)),
                        &self.$field,
                        $range,
                        settings!(@suffix $($suffix)?),
                    )?; )?
                )*
                $($( self.$nfield.check_ranges()?; )*)?
                Ok(())
            }
        }
    )*};

    (@suffix) => { "" };
    (@suffix $s:literal) => { $s };
    (@range_text) => { None };
    (@range_text $r:expr) => { Some($crate::config::declare::range_text(&$r)) };
    (@default $ty:ty, $default:expr) => {{
        let d: $ty = $default;
        $crate::config::declare::shown_default(&d)
    }};

    (@arg $id:expr, $doc:expr, $dflt:expr, $range:expr,
        value $long:literal $t:ty, $vn:literal $(, env $env:literal)?) => {
        $crate::config::declare::arg($id, $long, $crate::config::declare::Flag::Value,
            Some($vn), settings!(@env $($env)?),
            $crate::config::declare::help($id, $doc, $dflt, $range))
            .value_parser(clap::value_parser!($t))
    };
    (@arg $id:expr, $doc:expr, $dflt:expr, $range:expr,
        list $long:literal $t:ty, $vn:literal) => {
        $crate::config::declare::arg($id, $long, $crate::config::declare::Flag::List,
            Some($vn), None, $crate::config::declare::help($id, $doc, None, $range))
            .value_parser(clap::value_parser!($t))
    };
    (@arg $id:expr, $doc:expr, $dflt:expr, $range:expr, switch $long:literal) => {
        $crate::config::declare::arg($id, $long, $crate::config::declare::Flag::On,
            None, None, $crate::config::declare::help($id, $doc, None, None))
    };
    (@arg $id:expr, $doc:expr, $dflt:expr, $range:expr, switch_off $long:literal) => {
        $crate::config::declare::arg($id, $long, $crate::config::declare::Flag::Off,
            None, None, $crate::config::declare::help($id, $doc, None, None))
    };
    (@env) => { None };
    (@env $e:literal) => { Some($e) };

    (@apply $place:expr, $id:expr, $m:ident, value $long:literal $t:ty, $vn:literal $(, env $env:literal)?) => {
        if $crate::config::declare::given($m, $id) {
            if let Some(v) = $m.get_one::<$t>($id) {
                $place = v.clone().into();
            }
        }
    };
    (@apply $place:expr, $id:expr, $m:ident, list $long:literal $t:ty, $vn:literal) => {
        if $crate::config::declare::given($m, $id) {
            $place = $m.get_many::<$t>($id).into_iter().flatten().cloned().collect();
        }
    };
    (@apply $place:expr, $id:expr, $m:ident, switch $long:literal) => {
        if $crate::config::declare::given($m, $id) {
            $place = true;
        }
    };
    (@apply $place:expr, $id:expr, $m:ident, switch_off $long:literal) => {
        if $crate::config::declare::given($m, $id) {
            $place = false;
        }
    };
}

pub(crate) use settings;
