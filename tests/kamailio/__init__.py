"""Kamailio interoperability harness: config template, process control, a raw SIP client."""
