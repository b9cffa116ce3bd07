// Read by puppeteer's postinstall (cosmiconfig searches up from
// node_modules/puppeteer): never download a browser of its own, which fails
// where only package registries are reachable. mmdc launches Debian's
// chromium instead (puppeteer.json).
module.exports = {
  skipDownload: true,
};
