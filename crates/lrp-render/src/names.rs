//! `name()`, `ALL`, `FromStr` and `Display` for the option enums, from one table of names.

/// Implements `ALL`, `name()`, `FromStr` (ASCII case-insensitive) and `Display` for a fieldless
/// enum from `Variant => "name"` pairs; `$kind` names the option in parse errors.
macro_rules! named_enum {
    ($ty:ident, $kind:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            #[doc = concat!("Every ", $kind, ", in the order of its `FromStr` names.")]
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            #[doc = concat!("The lowercase name of this ", $kind, ", as `FromStr` accepts it.")]
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::RenderError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(s.trim()))
                    .ok_or_else(|| $crate::error::unknown_name($kind, s, &[$($name),+]))
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub(crate) use named_enum;
