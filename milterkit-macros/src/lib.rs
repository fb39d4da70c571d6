//! The `#[milterkit::milter]` attribute, re-exported by milterkit (see `milterkit::milter`): an
//! `impl Milter for …` block's `STAGES` built from the handlers it implements, as libmilter
//! derives its protocol flags from the callbacks that are not NULL; or, where `STAGES` is
//! written out, a compile error for a handler whose stage it leaves out (the MTA would never
//! call it).

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, ImplItem, ItemImpl};

/// Each stage handler of `Milter` and its `Stages` flag.
const HANDLERS: [(&str, &str); 10] = [
    ("connect", "CONNECT"),
    ("helo", "HELO"),
    ("mail", "MAIL"),
    ("rcpt", "RCPT"),
    ("data", "DATA"),
    ("header", "HEADER"),
    ("eoh", "EOH"),
    ("body", "BODY"),
    ("eom", "EOM"),
    ("unknown", "UNKNOWN"),
];

/// On an `impl Milter for …` block: sets `STAGES` to the stages of the handlers implemented
/// there, or checks a `STAGES` written out against them. See `milterkit::milter`.
#[proc_macro_attribute]
pub fn milter(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new_spanned(attr, "#[milterkit::milter] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    let Some((_, trait_path, _)) = block.trait_.clone() else {
        return syn::Error::new_spanned(
            &block.self_ty,
            "#[milterkit::milter] goes on an `impl Milter for …` block",
        )
        .to_compile_error()
        .into();
    };
    let implemented: Vec<(&str, &str)> = HANDLERS
        .into_iter()
        .filter(|(name, _)| {
            block
                .items
                .iter()
                .any(|i| matches!(i, ImplItem::Fn(f) if f.sig.ident == name))
        })
        .collect();
    let written = block
        .items
        .iter()
        .any(|i| matches!(i, ImplItem::Const(c) if c.ident == "STAGES"));
    if !written {
        let flags = implemented
            .iter()
            .map(|(_, flag)| format_ident!("{}", flag));
        block.items.push(syn::parse_quote! {
            const STAGES: ::milterkit::Stages = ::milterkit::Stages::empty() #(.union(::milterkit::Stages::#flags))*;
        });
        return quote!(#block).into();
    }
    // STAGES written out: each implemented handler's stage must be in it (end of message is
    // always sent). A generic block cannot be named from outside; it is left unchecked.
    if !block.generics.params.is_empty() {
        return quote!(#block).into();
    }
    let self_ty = &block.self_ty;
    let checks = implemented
        .iter()
        .filter(|(name, _)| *name != "eom")
        .map(|(name, flag)| {
            let flag = format_ident!("{}", flag);
            let message = format!(
                "{name}() is implemented but STAGES leaves out Stages::{flag}: the MTA would never call it"
            );
            quote! {
                assert!(
                    <#self_ty as #trait_path>::STAGES.contains(::milterkit::Stages::#flag),
                    #message
                );
            }
        });
    quote! {
        #block
        const _: () = { #(#checks)* };
    }
    .into()
}
