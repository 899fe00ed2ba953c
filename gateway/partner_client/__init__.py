"""The sending side of the partner link: mutual-TLS requests to partner gateways."""
