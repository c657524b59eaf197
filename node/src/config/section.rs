//! The one place a setting is declared: [`config_section!`] turns a list of
//! `name: Type = default` lines with doc comments into
//! - the section's serde struct (a `[section]` table of the TOML file) and
//!   its `Default`,
//! - a clap `Args` struct with a `--flag` and an `AGENTMESH_*` variable per
//!   setting (the flag is the name, kebab-cased, after the section's
//!   prefix), and the overlay of those over the file,
//! - the rows of the generated configuration reference.
//!
//! Checks that involve more than a setting's type live in
//! `Settings::from_config`.

use serde::{Deserialize, Serialize};
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::Duration;

/// One row of the configuration reference.
#[derive(Clone, Debug)]
pub struct SettingDoc {
    /// The TOML table, e.g. `consensus`.
    pub section: &'static str,
    /// The key inside it, e.g. `k`.
    pub key: &'static str,
    /// The clap argument id (the flag's and the variable's source).
    pub id: &'static str,
    pub ty: &'static str,
    pub doc: String,
    /// The default in TOML syntax.
    pub default: String,
}

/// Declares a configuration section; see the module documentation.
///
/// ```ignore
/// config_section! {
///     /// Consensus: how polls are sampled and decided.
///     ConsensusConfig / ConsensusFlags, "consensus", prefix consensus_ {
///         /// Peers sampled per poll.
///         k: usize = 20,
///     }
/// }
/// ```
/// Extra `#[arg(...)]` attributes after a setting's doc comment go to its
/// flag (a delimiter for lists, or another flag name kept for
/// compatibility).
macro_rules! config_section {
    // With a prefix: the flags are named `<prefix><name>`.
    (
        $(#[doc = $section_doc:literal])*
        $section:ident / $flags:ident, $key:literal, prefix $prefix:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[arg($($arg:tt)*)])*
                $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        paste::paste! {
            config_section!(@section
                $(#[doc = $section_doc])* $section / $flags, $key {
                    $($(#[doc = $doc])* $(#[arg($($arg)*)])* [<$prefix $field>] $field: $ty = $default,)*
                }
            );
        }
    };
    // Without: the flags are named as the settings.
    (
        $(#[doc = $section_doc:literal])*
        $section:ident / $flags:ident, $key:literal, prefix {
            $(
                $(#[doc = $doc:literal])*
                $(#[arg($($arg:tt)*)])*
                $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        config_section!(@section
            $(#[doc = $section_doc])* $section / $flags, $key {
                $($(#[doc = $doc])* $(#[arg($($arg)*)])* $field $field: $ty = $default,)*
            }
        );
    };
    (@section
        $(#[doc = $section_doc:literal])*
        $section:ident / $flags:ident, $key:literal {
            $(
                $(#[doc = $doc:literal])*
                $(#[arg($($arg:tt)*)])*
                $flag:ident $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        paste::paste! {
            $(#[doc = $section_doc])*
            #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(default, deny_unknown_fields)]
            pub struct $section {
                $(
                    $(#[doc = $doc])*
                    pub $field: $ty,
                )*
            }

            impl Default for $section {
                fn default() -> Self {
                    $section {
                        $($field: $default,)*
                    }
                }
            }

            #[doc = concat!("Flags and `AGENTMESH_*` variables of `[", $key, "]`.")]
            #[derive(clap::Args, Debug, Default, Clone)]
            #[command(next_help_heading = concat!("[", $key, "] settings"))]
            pub struct $flags {
                $(
                    $(#[doc = $doc])*
                    #[arg(long, env = stringify!([<AGENTMESH_ $flag:upper>]))]
                    $(#[arg($($arg)*)])*
                    pub $flag: Option<$ty>,
                )*
            }

            impl $flags {
                /// Lays the flags and variables that were given over `section`.
                pub fn overlay(&self, section: &mut $section) {
                    $(
                        if let Some(v) = &self.$flag {
                            section.$field = v.clone();
                        }
                    )*
                }
            }

            impl $section {
                /// The reference rows of this section, in declaration order.
                pub fn reference() -> Vec<$crate::config::section::SettingDoc> {
                    let defaults = toml::Value::try_from($section::default())
                        .expect("a section's defaults serialize to TOML");
                    vec![$(
                        $crate::config::section::SettingDoc {
                            section: $key,
                            key: stringify!($field),
                            id: stringify!($flag),
                            ty: stringify!($ty),
                            doc: {
                                let lines: &[&str] = &[$($doc),*];
                                lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
                            },
                            default: defaults
                                .get(stringify!($field))
                                .map(|v| v.to_string())
                                .unwrap_or_default(),
                        },
                    )*]
                }
            }
        }
    };
}

pub(crate) use config_section;

/// A positive whole number of seconds: the type of the `*_secs` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secs(NonZeroU64);

/// A positive whole number of milliseconds: the type of the `*_ms` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(NonZeroU64);

macro_rules! positive_duration {
    ($ty:ident, $from:path) => {
        impl $ty {
            /// Panics on 0: for defaults, which are constants.
            pub const fn new(n: u64) -> $ty {
                match NonZeroU64::new(n) {
                    Some(n) => $ty(n),
                    None => panic!("a duration setting must be positive"),
                }
            }

            pub fn get(self) -> u64 {
                self.0.get()
            }

            pub fn duration(self) -> Duration {
                $from(self.0.get())
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<$ty, String> {
                match s.trim().parse::<u64>() {
                    Ok(0) => Err("must be greater than 0".into()),
                    Ok(n) => Ok($ty::new(n)),
                    Err(_) => Err(format!("{s:?} is not a whole number")),
                }
            }
        }
    };
}

positive_duration!(Secs, Duration::from_secs);
positive_duration!(Millis, Duration::from_millis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_refuse_zero_and_text() {
        assert_eq!("30".parse::<Secs>().unwrap().duration().as_secs(), 30);
        assert_eq!("0".parse::<Millis>().unwrap_err(), "must be greater than 0");
        assert!("soon".parse::<Secs>().unwrap_err().contains("soon"));
        #[derive(Deserialize)]
        struct T {
            #[allow(dead_code)]
            s: Secs,
        }
        let err = toml::from_str::<T>("s = 0").err().unwrap().to_string();
        assert!(err.contains("nonzero"), "{err}");
    }
}
