//! Derive macros `Record` and `FromRow` for LaminarDB typed rows.
//!
//! `#[derive(Record)]` lets a struct be pushed into a source
//! (`laminar_db::record::Record`); `#[derive(FromRow)]` lets subscription rows
//! convert into it (`laminar_db::record::FromRow`, columns matched by **name**).
//! Both are normally used through the `laminar_db` crate, which re-exports
//! them; the generated code refers to `::laminar_db::record` and
//! `::laminar_db::arrow`, and delegates the work to small runtime helpers in
//! `laminar_db::record::__private`, so the expansion stays short.
//!
//! # Supported structs
//!
//! Non-generic structs with named fields and at least one field. Tuple
//! structs, unit structs, enums, unions and generic structs are rejected with
//! a compile error.
//!
//! # Supported field types
//!
//! `i8`, `i16`, `i32`, `i64`, `u8`, `u16`, `u32`, `u64`, `f32`, `f64`, `bool`,
//! `String`, `Vec<u8>`, and `Option<T>` of each (a path prefix such as
//! `std::string::String` is fine). Any other type is a compile error on that
//! field. The check is syntactic, so type aliases (`type Ms = i64;`) are
//! rejected too: write the type itself. `Option<T>` makes the column nullable;
//! see the Arrow mapping in `laminar_db::record`.
//!
//! # Field attributes
//!
//! - `#[event_time]`: this field is the event-time column
//!   (`Record::event_time_column()` returns its column name). At most one
//!   field; it must be a non-`Option` integer, normally `i64` epoch ms.
//!   `FromRow` checks the same rules and otherwise ignores it.
//! - `#[nullable]`: documentary. Nullability comes from the type alone, so
//!   `#[nullable]` is only allowed on `Option<T>` fields (on any other field it
//!   is a compile error, rather than a schema that claims NULLs the field can
//!   never hold or never accept).
//! - `#[column("name")]`: the column name, instead of the field name.
//!   Raw identifiers lose their `r#` prefix (`r#type` is column `type`).
//!
//! ```ignore
//! use laminar_db::{FromRow, Record};
//!
//! #[derive(Record, FromRow)]
//! struct Reading {
//!     sensor: String,
//!     temp: f64,
//!     #[event_time]
//!     ts: i64,
//!     #[nullable]
//!     note: Option<String>,
//!     #[column("zone_id")]
//!     zone: u32,
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, PathArguments, Type,
    parse_macro_input,
};

/// Derives `laminar_db::record::Record`: the Arrow schema (one field per struct
/// field, in declaration order) and the column-wise conversion to a
/// `RecordBatch`. See the crate docs for attributes and supported types.
#[proc_macro_derive(Record, attributes(event_time, nullable, column))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    parse_struct(&input)
        .map(|spec| expand_record(&spec))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `laminar_db::record::FromRow`: conversion of subscription batches
/// into the struct, matching columns by name (order does not matter, extra
/// columns are ignored). See the crate docs for attributes and supported types.
#[proc_macro_derive(FromRow, attributes(event_time, nullable, column))]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    parse_struct(&input)
        .map(|spec| expand_from_row(&spec))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A parsed struct: its name and fields in declaration order.
struct StructSpec {
    name: Ident,
    fields: Vec<FieldSpec>,
}

struct FieldSpec {
    ident: Ident,
    ty: Type,
    /// Column name: the `#[column]` value or the unraw field name.
    column: String,
    event_time: bool,
}

const SUPPORTED: &str = "i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, bool, String, Vec<u8>, \
                         or Option<T> of one of these";

const INTEGERS: [&str; 8] = ["i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"];

/// What the syntactic type check found out about a field type.
struct TypeInfo {
    optional: bool,
    integer: bool,
}

fn parse_struct(input: &DeriveInput) -> syn::Result<StructSpec> {
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named,
            Fields::Unnamed(_) => {
                return Err(syn::Error::new_spanned(
                    &data.fields,
                    "LaminarDB records need named fields (columns are matched by name); \
                     tuple structs are not supported",
                ));
            }
            Fields::Unit => {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "LaminarDB records need at least one named field; unit structs are not \
                     supported",
                ));
            }
        },
        Data::Enum(data) => {
            return Err(syn::Error::new(
                data.enum_token.span,
                "LaminarDB records must be structs with named fields; enums are not supported",
            ));
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                "LaminarDB records must be structs with named fields; unions are not supported",
            ));
        }
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "LaminarDB records cannot be generic (no type, lifetime or const parameters)",
        ));
    }
    if named.named.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "LaminarDB records need at least one field",
        ));
    }

    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let mut fields = Vec::with_capacity(named.named.len());
    for field in &named.named {
        // Named fields always have an identifier.
        let Some(ident) = field.ident.clone() else {
            push(syn::Error::new_spanned(field, "expected a named field"));
            continue;
        };
        match parse_field(ident, field) {
            Ok(spec) => fields.push(spec),
            Err(e) => push(e),
        }
    }

    let mut event_time: Option<&FieldSpec> = None;
    for (i, field) in fields.iter().enumerate() {
        if field.event_time {
            if let Some(first) = event_time {
                push(syn::Error::new_spanned(
                    &field.ident,
                    format!(
                        "#[event_time] may mark only one field; `{}` is already the event-time \
                         field",
                        first.ident.unraw()
                    ),
                ));
            } else {
                event_time = Some(field);
            }
        }
        if let Some(other) = fields[..i].iter().find(|f| f.column == field.column) {
            push(syn::Error::new_spanned(
                &field.ident,
                format!(
                    "column name `{}` is used twice (also by field `{}`)",
                    field.column,
                    other.ident.unraw()
                ),
            ));
        }
    }

    match errors {
        Some(e) => Err(e),
        None => Ok(StructSpec {
            name: input.ident.clone(),
            fields,
        }),
    }
}

fn parse_field(ident: Ident, field: &syn::Field) -> syn::Result<FieldSpec> {
    let mut event_time = None;
    let mut nullable = None;
    let mut column: Option<LitStr> = None;
    for attr in &field.attrs {
        let path = attr.path();
        if path.is_ident("event_time") || path.is_ident("nullable") {
            let (slot, name) = if path.is_ident("event_time") {
                (&mut event_time, "event_time")
            } else {
                (&mut nullable, "nullable")
            };
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                return Err(syn::Error::new_spanned(
                    attr,
                    format!("#[{name}] takes no arguments"),
                ));
            }
            if slot.is_some() {
                return Err(syn::Error::new_spanned(attr, "duplicate attribute"));
            }
            *slot = Some(attr);
        } else if path.is_ident("column") {
            let lit: LitStr = attr.parse_args().map_err(|e| {
                syn::Error::new(e.span(), "expected a column name: #[column(\"name\")]")
            })?;
            if lit.value().is_empty() {
                return Err(syn::Error::new_spanned(
                    &lit,
                    "column name must not be empty",
                ));
            }
            if column.is_some() {
                return Err(syn::Error::new_spanned(
                    attr,
                    "duplicate #[column] attribute",
                ));
            }
            column = Some(lit);
        }
    }

    let info = classify(&field.ty).ok_or_else(|| {
        syn::Error::new_spanned(
            &field.ty,
            format!(
                "unsupported type for LaminarDB record field `{}`; supported: {SUPPORTED}",
                ident.unraw()
            ),
        )
    })?;
    if let Some(attr) = event_time
        && (info.optional || !info.integer)
    {
        return Err(syn::Error::new_spanned(
            attr,
            format!(
                "#[event_time] field `{}` must be a non-Option integer, normally i64 \
                 epoch milliseconds",
                ident.unraw()
            ),
        ));
    }
    if let Some(attr) = nullable
        && !info.optional
    {
        return Err(syn::Error::new_spanned(
            attr,
            format!(
                "#[nullable] field `{}` must be an Option<T>: nullability comes from the \
                 type",
                ident.unraw()
            ),
        ));
    }

    let column = column.map_or_else(|| ident.unraw().to_string(), |lit| lit.value());
    Ok(FieldSpec {
        ident,
        ty: field.ty.clone(),
        column,
        event_time: event_time.is_some(),
    })
}

/// Syntactic check of a field type against the supported list; `None` if unsupported.
fn classify(ty: &Type) -> Option<TypeInfo> {
    if let Some(inner) = generic_arg(ty, "Option") {
        let inner = scalar(inner)?;
        return Some(TypeInfo {
            optional: true,
            ..inner
        });
    }
    scalar(ty)
}

fn scalar(ty: &Type) -> Option<TypeInfo> {
    if let Some(inner) = generic_arg(ty, "Vec") {
        let byte =
            matches!(last_segment(inner), Some(s) if s.ident == "u8" && s.arguments.is_none());
        return byte.then_some(TypeInfo {
            optional: false,
            integer: false,
        });
    }
    let segment = last_segment(ty)?;
    if !segment.arguments.is_none() {
        return None;
    }
    let name = segment.ident.to_string();
    let integer = INTEGERS.contains(&name.as_str());
    let other = matches!(name.as_str(), "f32" | "f64" | "bool" | "String");
    (integer || other).then_some(TypeInfo {
        optional: false,
        integer,
    })
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// `Some(T)` if `ty` is `name<T>` (any path prefix).
fn generic_arg<'t>(ty: &'t Type, name: &str) -> Option<&'t Type> {
    let segment = last_segment(ty)?;
    if segment.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    if args.args.len() != 1 {
        return None;
    }
    match args.args.first() {
        Some(GenericArgument::Type(inner)) => Some(inner),
        _ => None,
    }
}

fn expand_record(spec: &StructSpec) -> TokenStream2 {
    let name = &spec.name;
    let fields = spec.fields.iter().map(|f| {
        let (ty, column) = (&f.ty, &f.column);
        quote_spanned! {ty.span()=>
            ::laminar_db::record::__private::field::<#ty>(#column)
        }
    });
    let columns = spec.fields.iter().map(|f| {
        let (ident, ty) = (&f.ident, &f.ty);
        quote_spanned! {ty.span()=>
            ::laminar_db::record::__private::column::<Self, #ty>(rows, |row| &row.#ident)
        }
    });
    let event_time = spec.fields.iter().find(|f| f.event_time).map(|f| {
        let column = &f.column;
        quote! {
            fn event_time_column() -> ::core::option::Option<&'static str> {
                ::core::option::Option::Some(#column)
            }
        }
    });
    quote! {
        impl ::laminar_db::record::Record for #name {
            fn schema() -> ::laminar_db::arrow::datatypes::SchemaRef {
                static SCHEMA: ::std::sync::OnceLock<::laminar_db::arrow::datatypes::SchemaRef> =
                    ::std::sync::OnceLock::new();
                ::std::sync::Arc::clone(SCHEMA.get_or_init(|| {
                    ::laminar_db::record::__private::schema(::std::vec![#(#fields),*])
                }))
            }

            fn to_record_batch(
                rows: &[Self],
            ) -> ::core::result::Result<
                ::laminar_db::arrow::record_batch::RecordBatch,
                ::laminar_db::arrow::error::ArrowError,
            > {
                ::laminar_db::record::__private::record_batch(
                    <Self as ::laminar_db::record::Record>::schema(),
                    ::std::vec![#(#columns),*],
                    rows.len(),
                )
            }

            #event_time
        }
    }
}

fn expand_from_row(spec: &StructSpec) -> TokenStream2 {
    let name = &spec.name;
    let checks = spec.fields.iter().map(|f| {
        let (ty, column) = (&f.ty, &f.column);
        quote_spanned! {ty.span()=>
            ::laminar_db::record::__private::check_column::<#ty>(schema, #column)?;
        }
    });
    let vars: Vec<Ident> = (0..spec.fields.len())
        .map(|i| format_ident!("__laminar_column_{}", i, span = Span::mixed_site()))
        .collect();
    let reads = spec.fields.iter().zip(&vars).map(|(f, var)| {
        let (ty, column) = (&f.ty, &f.column);
        quote_spanned! {ty.span()=>
            let mut #var = ::laminar_db::record::__private::read_column::<#ty>(batch, #column)?
                .into_iter();
        }
    });
    let values: Vec<Ident> = (0..spec.fields.len())
        .map(|i| format_ident!("__laminar_value_{}", i, span = Span::mixed_site()))
        .collect();
    let idents = spec.fields.iter().map(|f| &f.ident);
    // Mixed-site names cannot collide with field names such as `rows`.
    let rows = Ident::new("rows", Span::mixed_site());
    quote! {
        impl ::laminar_db::record::FromRow for #name {
            fn check_schema(
                schema: &::laminar_db::arrow::datatypes::Schema,
            ) -> ::core::result::Result<(), ::laminar_db::record::RecordError> {
                #(#checks)*
                ::core::result::Result::Ok(())
            }

            fn from_batch(
                batch: &::laminar_db::arrow::record_batch::RecordBatch,
            ) -> ::core::result::Result<::std::vec::Vec<Self>, ::laminar_db::record::RecordError> {
                #(#reads)*
                let mut #rows = ::std::vec::Vec::with_capacity(batch.num_rows());
                // Every column iterator yields exactly `num_rows` values.
                while let (#(::core::option::Option::Some(#values),)*) = (#(#vars.next(),)*) {
                    #rows.push(Self { #(#idents: #values),* });
                }
                ::core::result::Result::Ok(#rows)
            }
        }
    }
}
