"use strict";
// The API page (/docs): Swagger UI over the service's own OpenAPI document.
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null,  // offline: never send the document to the public validator
});
