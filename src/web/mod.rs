//! The dashboard. This branch holds its deliveries, triggers and skills, and budgets pages: render
//! functions that return a page's main content as an HTML fragment, with no routing or sign-in (the
//! dashboard's shell wraps them). Every value on them comes from strangers and is escaped
//! ([`fragment`]); every link is a relative path.

pub mod budgets;
pub mod catalog;
pub mod deliveries;
pub mod fragment;
