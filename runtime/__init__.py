"""The browser runtime (JavaScript ES modules, no build step), shipped inside the package as
tgc.web so `tgc bundle` finds it after `pip install`; docs/browser.md is its manual."""
