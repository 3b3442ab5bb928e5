"""The studio's sections that are not built yet: each gets a page that says what is coming.

Every section of the issue list is built now (the Playground was the last, apps/playground), so
none is left; the `section` page stays for the next one."""
SECTIONS: dict[str, tuple[str, str]] = {}
