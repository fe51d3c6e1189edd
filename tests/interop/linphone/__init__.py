"""liblinphone test peers: the Kamailio registrar config and the linphone-daemon driver."""
