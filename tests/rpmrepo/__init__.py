"""The vzpkg test RPM distribution: spec files, template and builder."""
